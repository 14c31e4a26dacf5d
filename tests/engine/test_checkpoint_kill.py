"""A real ``bouquet run`` killed (SIGKILL) or stopped (SIGINT, SIGTERM) mid-run, then resumed: identical results."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_checkpoint import assert_same_run

from bouquet.engine.checkpoint import CheckpointDir

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 40
SETTINGS = [f"run.rounds={ROUNDS}", "run.checkpoint_every=2", "run.eval_every=10", "run.threads=1"]
TAGS = ["fedavg-seed0", "local-seed0"]

pytestmark = pytest.mark.slow


def _bouquet(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bouquet", "run", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start(out: Path) -> subprocess.Popen:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return _bouquet(str(ROOT / "configs" / "synthetic_linear.toml"), *sets, "--algorithms", "fedavg,local",
                    "--out", str(out))


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, tag: str, min_round: int) -> bool:
    """Poll until ``tag`` has a checkpoint of round >= ``min_round``; False if the process ended first."""
    ck = CheckpointDir(run_dir / "checkpoints")
    while proc.poll() is None:
        files = ck.files(tag)
        if files and int(files[0].name.rsplit("-r", 1)[1][:7]) >= min_round:
            return True
        time.sleep(0.01)
    return False


class Reference:
    """The uninterrupted run, started at once and awaited only when needed (it runs beside the first test)."""

    def __init__(self, out: Path):
        self.out, self.proc = out, _start(out)

    def dir(self) -> Path:
        if self.proc is not None:
            rc, err = _finish(self.proc)
            assert rc == 0, err
            self.proc = None
        return self.out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("uninterrupted") / "run")
    yield ref
    if ref.proc is not None and ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.communicate()


def test_sigkill_at_a_random_round_then_resume_is_identical(tmp_path: Path, reference: Reference) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    tag, at = rng.choice(TAGS), rng.randrange(2, ROUNDS - 10)  # rounds left after the target: the kill lands
    out = tmp_path / "run"
    proc = _start(out)
    reached = _wait_for_checkpoint(proc, out, tag, at)
    if reached:
        time.sleep(rng.uniform(0, 0.01))  # anywhere in the next round or two, also mid-write
        proc.send_signal(signal.SIGKILL)
    rc, err = _finish(proc)
    assert reached and rc == -signal.SIGKILL, f"seed {seed}: process ended before the kill ({rc}): {err}"
    assert not (out / "summary.json").exists() or tag == "local-seed0"
    rc, err = _finish(_bouquet("--resume", str(out)))
    assert rc == 0, f"seed {seed} ({tag} after round {at}): {err}"
    try:
        assert_same_run(out, reference.dir())
    except AssertionError as e:
        raise AssertionError(f"seed {seed} ({tag} after round {at}): {e}") from None


@pytest.mark.parametrize(("sig", "code", "reason"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_writes_a_checkpoint_and_exits_128_plus_signal(tmp_path: Path, reference: Reference,
                                                                          sig: int, code: int, reason: str) -> None:
    out = tmp_path / "run"
    proc = _start(out)
    assert _wait_for_checkpoint(proc, out, "fedavg-seed0", 6)
    proc.send_signal(sig)
    rc, err = _finish(proc)
    assert rc == code, err
    assert f"bouquet: {reason}: fedavg seed 0 stopped after round" in err
    assert "checkpoint" in err and f"bouquet run --resume {out}" in err
    stopped = int(err.split("stopped after round ")[1].split()[0])
    assert CheckpointDir(out / "checkpoints").files("fedavg-seed0")[0].name == f"fedavg-seed0-r{stopped:07d}.ckpt"
    rc, err = _finish(_bouquet("--resume", str(out)))
    assert rc == 0, err
    assert_same_run(out, reference.dir())
