"""One writer per run directory: a second ``bouquet run`` into a busy directory is refused, naming the holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bouquet.app.cli import main
from bouquet.files import DirLock

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "synthetic_linear.toml")
SMALL = ["--set", "run.rounds=3", "--set", "run.eval_every=3", "--set", "run.checkpoint_every=0"]


def _bouquet(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bouquet", "run", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_second_writer_is_refused_and_the_first_run_completes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rounds = 1200
    first = _bouquet(CONFIG, "--set", f"run.rounds={rounds}", "--set", "run.eval_every=400", "--set",
                     "run.checkpoint_every=400", "--set", "run.threads=1", "--out", str(out))
    try:
        deadline = time.monotonic() + 60
        while not ((out / ".lock").is_file() and (out / ".lock").read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.02)
        assert (out / ".lock").read_text().strip() == str(first.pid)
        second = _bouquet(CONFIG, *SMALL, "--out", str(out))
        _, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first run ended before the second tried: the test proves nothing"
        lines = [line for line in err.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1, err
        assert lines[0].startswith("bouquet: error: --out ") and f"PID {first.pid}" in lines[0], err
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["algorithms"]) == {"fedavg", "local"}
    assert all(s["rounds"] == rounds for a in summary["algorithms"].values() for s in a["per_seed"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, rounds + 1)) * 2
    assert not (out / ".lock").exists()


def test_a_held_lock_names_its_pid_and_a_stale_one_is_taken_over(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", CONFIG, *SMALL, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    with DirLock(out):
        for argv in (["run", CONFIG, *SMALL, "--out", str(out)], ["run", "--resume", str(out)]):
            assert main([*argv, "--no-progress"]) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and f"{argv[-2]} {out}: in use by another bouquet run (PID {os.getpid()}" in err
    assert not (out / ".lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid}\n")  # left behind by a killed run: no flock is held on it
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert not (out / ".lock").exists()
