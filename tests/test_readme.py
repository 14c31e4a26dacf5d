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
