"""Bit for bit across processes: two fresh `bouquet run` processes with `run.deterministic = true` (and
MKL's reproducible code path) write byte-identical metrics.jsonl files, whatever OMP_NUM_THREADS says."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bouquet.app.runner import MKL_REPRODUCIBLE, deterministic_mode

REPO = Path(__file__).resolve().parents[2]


def _run(out: Path, threads: str) -> bytes:
    env = {**os.environ, "MKL_CBWR": MKL_REPRODUCIBLE, "OMP_NUM_THREADS": threads, "PYTHONHASHSEED": threads}
    args = [sys.executable, "-m", "bouquet", "run", str(REPO / "configs" / "demo.toml"), "--algorithms",
            "fedavg,floral", "--set", "run.rounds=6", "--set", "run.eval_every=3", "--set", "run.deterministic=true",
            "--out", str(out), "--no-progress"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MKL_CBWR" not in proc.stderr  # no reproducibility warning with the variable set
    return (out / "metrics.jsonl").read_bytes()


def test_two_fresh_processes_give_byte_identical_metrics(tmp_path):
    first = _run(tmp_path / "a", "1")
    second = _run(tmp_path / "b", "2")
    assert first == second and first.count(b"\n") == 12


def test_deterministic_mode_warns_without_mkl_cbwr(monkeypatch):
    import torch

    monkeypatch.delenv("MKL_CBWR", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        with pytest.warns(UserWarning, match="MKL_CBWR"):
            deterministic_mode(1)
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
        monkeypatch.setenv("MKL_CBWR", MKL_REPRODUCIBLE)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            deterministic_mode(1)
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])
