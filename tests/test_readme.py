"""The README's Python example runs as written (only the run directory is moved to a temporary one)."""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_api_example_runs(tmp_path, capsys):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "import bouquet as bq" in code and "from bouquet." not in code  # the public API only
    code = code.replace('"runs/demo-20"', repr(str(tmp_path / "demo")))
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.strip().splitlines()
    assert 0.0 <= float(printed[0]) <= 1.0
    assert (tmp_path / "demo" / "summary.json").is_file()


def test_demo_script_ends_by_writing_the_report():
    """The first command runs the demo into runs/demo, then writes its report (which prints its path)."""
    lines = [x.strip() for x in (REPO / "scripts" / "demo.sh").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    run, report = lines[-2].split(), lines[-1].split()
    assert run[:3] == [".venv/bin/bouquet", "run", "configs/demo.toml"] and run[run.index("--out") + 1] == "runs/demo"
    assert report == [".venv/bin/bouquet", "report", "runs/demo"]
    setup = (REPO / "scripts" / "setup.sh").read_text()
    core = setup[setup.rindex("else"):]
    assert '-e ".[plot]"' in core  # the demo's core install brings matplotlib for the report
    readme = (REPO / "README.md").read_text()
    first = readme[readme.index("## Two commands"):readme.index("## Running experiments")]
    assert "runs/demo/report/report.html" in first and "report" in first.split("bash scripts/test.sh")[0]


def test_readme_tour_example_runs(capsys):
    """The five-minute tour's FLoRAL-on-your-model snippet (20 rounds instead of 400, same code)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## A five-minute tour"):text.index("## Running experiments")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "from bouquet." not in code and code.count("rounds=400") == 1
    exec(compile(code.replace("rounds=400", "rounds=20"), "README.md", "exec"), {})
    assert 0.0 <= float(capsys.readouterr().out.strip().splitlines()[-1]) <= 1.0
