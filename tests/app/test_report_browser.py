"""report.html of ``bouquet report`` and of ``bouquet compare`` in a real headless Chromium (Debian's chromium +
chromium-driver, driven by selenium): no console errors, every figure decoded and drawn, the methods table present;
a screenshot is written."""

import shutil
from pathlib import Path

import pytest

from bouquet.app.cli import main
from bouquet.app.config import parse_experiment
from bouquet.app.runner import run_experiment

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")

RAW = {
    "name": "browser_report", "algorithms": ["fedavg", "floral"],
    "data": {"name": "digits", "num_clients": 8, "num_clusters": 2, "shift": "label_shift"},
    "model": {"name": "mlp", "hidden": 16},
    "run": {"rounds": 4, "clients_per_round": 4, "batch_size": 16, "eval_every": 2, "seeds": [0, 1],
            "checkpoint_every": 0},
    "train": {"lr": 0.1},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    run_experiment(parse_experiment(RAW), base / "run", progress=False)
    return base / "run"


@pytest.fixture(params=["report", "compare"])
def report(request, run_dir) -> Path:
    out = run_dir.parent / request.param
    assert main([request.param, str(run_dir), "--out", str(out)]) == 0
    return out / "report.html"


def test_report_html_renders_in_headless_chromium(report):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(report.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) >= 5
        broken = [alt for alt, done, w, h in images if not (done and w > 100 and h > 100)]
        assert not broken, f"figures not drawn: {broken}"
        rows = driver.execute_script("return Array.from(document.querySelectorAll('table tr')).map(r => r.innerText)")
        assert any("fedavg" in r for r in rows) and any("floral" in r for r in rows)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        shot = report.parent / "screenshot.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
    finally:
        driver.quit()
