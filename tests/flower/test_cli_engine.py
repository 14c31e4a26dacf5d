"""`bouquet run --engine ...`: flag validation and a clear one-line error when the SuperLink is unreachable."""

import subprocess
import sys
from pathlib import Path

import pytest
from flowerkit import SMALL

from bouquet.app.cli import main
from bouquet.flower.deploy import free_port


def test_unknown_engine_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    with pytest.raises(SystemExit) as err:
        main(["run", str(config), "--engine", "ray"])
    assert err.value.code == 2
    assert "invalid choice: 'ray'" in capsys.readouterr().err


def test_unreachable_superlink_fails_with_one_line(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    cmd = [str(Path(sys.executable).parent / "bouquet"), "run", str(config), "--engine", "flower",
           "--superlink", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "run"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "bouquet: error: fedavg seed 0: the Flower run ended without a summary" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
