"""Reports from real (small) run directories: figures, report.md, a self-contained report.html, the table."""

import base64
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from bouquet.app.cli import main
from bouquet.app.config import parse_experiment
from bouquet.app.report import results_table, router_ari
from bouquet.app.report_data import load_run, mean_band, methods
from bouquet.app.report_html import write_report
from bouquet.app.runner import run_experiment

RAW = {
    "name": "tiny_report",
    "algorithms": ["fedavg", "floral"],
    "data": {"name": "synthetic_linear", "num_clients": 6, "num_clusters": 2, "test_per_client": 20},
    "model": {"name": "linear"},
    "run": {"rounds": 4, "clients_per_round": 6, "batch_size": 4, "eval_every": 2, "seeds": [0, 1],
            "checkpoint_every": 0},
    "train": {"lr": 0.1},
    "server": {"optimizer": "sgd", "lr": 1.0},
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    run_experiment(parse_experiment(RAW), out, progress=False)
    return out


def _one_seed(tmp_path: Path, run_dir: Path) -> Path:
    raw = {**RAW, "run": {**RAW["run"], "seeds": [3]}, "algorithms": ["local"]}
    out = tmp_path / "one"
    run_experiment(parse_experiment(raw), out, progress=False)
    return out


def test_report_writes_figures_markdown_and_html(run_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    for stem in ("mse_vs_round", "mse_vs_mb", "mse_per_client", "mse_per_cluster"):
        assert (out / f"{stem}.png").read_bytes().startswith(PNG)
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:2000]
    routers = sorted(p.name for p in out.glob("router_*.png"))
    assert routers == ["router_0_floral.png", "router_ari_vs_round.png"]  # fedavg has no router
    md = (out / "report.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / link).stat().st_size > 1000, link
    assert "| fedavg |" in md and "| floral |" in md
    page = (out / "report.html").read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert len(images) == 6 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert 'src="' not in page.replace('src="data:image/png;base64,', "")  # self-contained: nothing linked
    table = re.search(r'<table class="results">(.*?)</table>', page, re.S).group(1)
    assert table.count("<tr>") == 3 and "router ARI" in table and "MB/round" in table and "overhead" in table


def test_report_defaults_to_run_dir_and_leaves_no_temporaries(run_dir):
    path = write_report([run_dir])
    assert path == run_dir / "report" / "report.html" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_curves_follow_the_metrics_file(run_dir):
    run = load_run(run_dir)
    fedavg, floral = methods([run])
    rounds, mbs, means, stds = mean_band(fedavg.curves)
    assert rounds == [2, 4]
    evals = [r for r in run.records if r["algorithm"] == "fedavg" and r["round"] == 4]
    assert means[1] == pytest.approx(sum(r["eval"]["mean"] for r in evals) / 2)
    assert mbs[1] == pytest.approx(evals[0]["bytes_total"] / 6 / 1e6)
    assert stds[1] > 0  # two seeds differ
    assert set(floral.router) == {0, 1} and len(floral.router[0]) == 6 and not fedavg.router
    assert len(fedavg.final_clients[1]) == 6


def test_two_runs_with_the_same_algorithm_are_told_apart(run_dir, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("report"))
    summary = json.loads((other / "summary.json").read_text())
    summary["name"] = "second"
    (other / "summary.json").write_text(json.dumps(summary))
    labels = [m.label for m in methods([load_run(run_dir), load_run(other)])]
    assert labels == ["fedavg (tiny_report)", "floral (tiny_report)", "fedavg (second)", "floral (second)"]
    page = write_report([run_dir, other], tmp_path / "both").read_text()
    assert page.count('<table class="results">') == 2 and "fedavg (second)" in (tmp_path / "both" /
                                                                                  "mse_vs_round.svg").read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "bad_json"])
def test_bad_run_dir_is_one_line_error(case, tmp_path, capsys):
    target = tmp_path / "r"
    if case != "missing":
        target.mkdir()
    if case == "bad_json":
        (target / "summary.json").write_text("{not json")
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bouquet: error: ") and err.count("\n") == 1 and str(target) in err


def test_table_shows_router_ari_and_no_spread_for_one_seed(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    floral = summary["algorithms"]["floral"]
    ari = sum(s["extra"]["router_ari"] for s in floral["per_seed"]) / 2
    assert router_ari(floral) == pytest.approx(ari) and router_ari(summary["algorithms"]["fedavg"]) is None
    table = results_table(summary).splitlines()
    assert "router ARI" in table[0]
    row = {line.split()[0]: line.split() for line in table[2:4]}
    assert row["floral"][-2] == f"{ari:.2f}" and row["fedavg"][-2] == "-"
    assert "±" in table[2] and "(mean ± std over 2 seeds [0, 1]; " in table[-1]  # two seeds: mean ± std
    one = json.loads((_one_seed(tmp_path, run_dir) / "summary.json").read_text())
    text = results_table(one)
    assert "±" not in text and "(seed 3; " in text
    last = one["algorithms"]["local"]["last"]["mean"]
    assert f"{last:.4f}" in text.splitlines()[2]


def test_classification_run_gives_accuracy_figures_in_percent(tmp_path):
    raw = {**RAW, "algorithms": ["fedavg", "local"], "model": {"name": "mlp", "hidden": 16},
           "data": {"name": "digits", "num_clients": 6, "num_clusters": 2, "shift": "label_shift"},
           "run": {**RAW["run"], "clients_per_round": 3, "batch_size": 16, "seeds": [0]}}
    out = tmp_path / "cls"
    run_experiment(parse_experiment(raw), out, progress=False)
    page = write_report([out]).read_text()
    rep = out / "report"
    assert all((rep / f"accuracy_{s}.png").stat().st_size > 1000 for s in ("vs_round", "vs_mb", "per_client"))
    assert "accuracy (%)" in (rep / "accuracy_vs_round.svg").read_text()
    assert "<th>last accuracy (%)</th>" in page and "±" not in page.split("<h2>Figures")[0]  # one seed
    last = json.loads((out / "summary.json").read_text())["algorithms"]["local"]["last"]["mean"]
    assert f"<td>{100 * last:.2f}</td>" in page


def test_report_without_matplotlib_is_one_line_error(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == ("bouquet: error: report: needs matplotlib; install it with: "
                                       "pip install 'bouquet[plot]'\n")


def test_router_ari_is_followed_by_round(run_dir):
    """Evaluation records of routed methods carry the router ARI; the report plots it against round."""
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    floral = [r["eval"]["router_ari"] for r in recs if r["algorithm"] == "floral" and "eval" in r]
    assert len(floral) == 4 and all(-1.0 <= a <= 1.0 for a in floral)  # 2 evaluations x 2 seeds
    assert not any("router_ari" in r["eval"] for r in recs if r["algorithm"] == "fedavg" and "eval" in r)
    ms = {m.name: m for m in methods([load_run(run_dir)])}
    assert sorted(ms["floral"].ari) == [0, 1] and not ms["fedavg"].ari
