"""Checkpoint files (checksum, atomic rotation, fallback) and resuming runs in-process to identical results."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from bouquet.app.config import ConfigError, load_experiment
from bouquet.app.runner import resume_experiment, run_experiment
from bouquet.engine.checkpoint import (
    CheckpointDir,
    CheckpointError,
    CheckpointWarning,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

ROOT = Path(__file__).resolve().parents[2]


def _exp(rounds: int = 12, every: int = 3):
    return load_experiment(ROOT / "configs" / "synthetic_linear.toml",
                           [f"run.rounds={rounds}", f"run.checkpoint_every={every}", "run.eval_every=4"])


def _strip_wall(obj):
    if isinstance(obj, dict):
        return {k: _strip_wall(v) for k, v in obj.items() if k not in ("wall_seconds", "wall")}
    if isinstance(obj, list):
        return [_strip_wall(v) for v in obj]
    return obj


def assert_same_tree(a, b, where="") -> None:
    """Equal containers; tensors equal bit for bit (same dtype, shape and values, NaN where NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def final_checkpoints(run_dir: Path) -> dict:
    """The newest checkpoint of every (algorithm, seed) in a run directory, wall-clock fields removed."""
    out = {}
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        tag = path.name.rsplit("-r", 1)[0]
        out[tag] = path  # sorted: the newest round wins
    return {tag: _strip_wall(load_checkpoint(p)) for tag, p in out.items()}


def assert_same_run(a: Path, b: Path) -> None:
    """Same summary (but wall-clock time), same metrics file, same final checkpoints."""
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert _strip_wall(sa) == _strip_wall(sb)
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    ca, cb = final_checkpoints(a), final_checkpoints(b)
    assert set(ca) == set(cb)
    for tag in ca:
        assert ca[tag]["finished"] and cb[tag]["finished"]
        assert_same_tree(ca[tag], cb[tag], tag)


# -- files -----------------------------------------------------------------------------------------

def test_roundtrip_and_checksum(tmp_path: Path) -> None:
    obj = {"x": torch.randn(4, 3), "n": 3, "nested": {"y": torch.arange(5)}, "records": [{"a": 1.5, "b": None}]}
    path = tmp_path / "a.ckpt"
    save_checkpoint(path, obj)
    assert_same_tree(load_checkpoint(path), obj)
    raw = path.read_bytes()
    for bad in (raw[:-7], raw[:30], raw[:-20] + b"x" * 20, b"not a checkpoint"):
        path.write_bytes(bad)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_keeps_last_two_and_falls_back_with_a_warning(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path)
    for r in range(1, 5):
        ck.save("fedavg-seed0", r, {"round": r})
    ck.save("local-seed0", 9, {"round": 9})
    assert [p.name for p in ck.files("fedavg-seed0")] == ["fedavg-seed0-r0000004.ckpt", "fedavg-seed0-r0000003.ckpt"]
    newest = ck.files("fedavg-seed0")[0]
    newest.write_bytes(newest.read_bytes()[:-3])
    with pytest.warns(CheckpointWarning, match="checksum"):
        obj, path = ck.latest("fedavg-seed0")
    assert obj["round"] == 3 and path.name.endswith("r0000003.ckpt")
    assert ck.latest("nothing") is None


def test_rng_state_roundtrip() -> None:
    import random

    import numpy as np

    state = rng_state()
    a = (torch.rand(3), np.random.rand(2), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


# -- resuming in-process -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run_experiment(_exp(), out, progress=False)
    return out


def _killed_copy(reference: Path, out: Path, tag: str, after_round: int) -> None:
    """A copy of a finished run made to look killed after ``tag``'s checkpoint of round ``after_round``."""
    import shutil

    shutil.copytree(reference, out)
    tags = ["fedavg-seed0", "local-seed0"]
    for path in (out / "checkpoints").glob("*.ckpt"):
        t, rnd = path.name.rsplit("-r", 1)
        if tags.index(t) > tags.index(tag) or (t == tag and int(rnd[:7]) > after_round):
            path.unlink()
    (out / "summary.json").unlink()


def test_resume_mid_run_matches_uninterrupted(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed_copy(reference, out, "fedavg-seed0", 9)
    stale = [out / "checkpoints" / ".fedavg-seed0-r0000012.ckpt.k1x2.tmp", out / ".metrics.jsonl.abc.tmp"]
    for p in stale:  # what a writer killed between mkstemp and rename leaves behind
        p.write_bytes(b"half")
    assert [p.name for p in CheckpointDir(out / "checkpoints").files("fedavg-seed0")] == ["fedavg-seed0-r0000009.ckpt"]
    resume_experiment(out, progress=False)
    assert_same_run(out, reference)
    assert not any(p.exists() for p in stale)


def test_resume_skips_finished_runs_and_survives_a_corrupt_checkpoint(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed_copy(reference, out, "local-seed0", 12)
    fedavg_final = (out / "checkpoints" / "fedavg-seed0-r0000012.ckpt").read_bytes()
    newest = CheckpointDir(out / "checkpoints").files("local-seed0")[0]
    assert newest.name.endswith("r0000012.ckpt")
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])  # truncated: round 9 is used
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resume_experiment(out, progress=False)
    assert any(issubclass(w.category, CheckpointWarning) for w in caught)
    assert (out / "checkpoints" / "fedavg-seed0-r0000012.ckpt").read_bytes() == fedavg_final  # not rerun
    assert_same_run(out, reference)


def test_new_run_refuses_a_directory_with_checkpoints(tmp_path: Path, reference: Path) -> None:
    with pytest.raises(ConfigError, match="--resume"):
        run_experiment(_exp(), reference, progress=False)


def test_resume_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such run directory"):
        resume_experiment(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no config.toml"):
        resume_experiment(tmp_path)
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(ConfigError, match="data: missing required table"):
        resume_experiment(tmp_path)


# -- metrics.jsonl: appended, tied to the checkpoints by segments --------------------------------

def test_checkpoints_hold_state_not_history(tmp_path: Path) -> None:
    sizes = {}
    for rounds in (12, 120):
        out = tmp_path / f"r{rounds}"
        run_experiment(_exp(rounds=rounds, every=3), out, algorithms=["fedavg"], progress=False)
        newest = CheckpointDir(out / "checkpoints").files("fedavg-seed0")[0]
        snap = load_checkpoint(newest)
        assert "records" not in snap and snap["metrics"]["lines"] == rounds
        assert snap["metrics"]["bytes"] == (out / "metrics.jsonl").stat().st_size
        sizes[rounds] = newest.stat().st_size
    assert abs(sizes[120] - sizes[12]) < 1000, sizes  # the same state: 10x the rounds, not 10x the bytes


def test_resume_cuts_lines_written_after_the_checkpoint(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed_copy(reference, out, "fedavg-seed0", 9)  # metrics.jsonl holds all 24 lines, the checkpoint 9
    with (out / "metrics.jsonl").open("ab") as f:
        f.write(b'{"algorithm": "loc')  # and half a line, as a process killed mid-append leaves it
    resume_experiment(out, progress=False)
    assert_same_run(out, reference)


def test_lost_metrics_lines_void_the_checkpoints_that_need_them(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed_copy(reference, out, "local-seed0", 9)
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (out / "metrics.jsonl").write_bytes(b"".join(lines[:7]))  # fewer lines than fedavg's checkpoints (9, 12) hold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resume_experiment(out, progress=False)
    skipped = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert any("fedavg-seed0-r0000012.ckpt: its records are missing from" in m for m in skipped), skipped
    assert_same_run(out, reference)  # both runs computed again, to the same records


def test_resume_reads_checkpoints_that_hold_their_records(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    _killed_copy(reference, out, "local-seed0", 9)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for path in (out / "checkpoints").glob("*.ckpt"):  # rewritten in the earlier format: records, no segment
        snap = load_checkpoint(path)
        tag = path.name.rsplit("-r", 1)[0]
        snap["records"] = [r for r in records if f"{r['algorithm']}-seed{r['seed']}" == tag][:snap["round"]]
        del snap["metrics"], snap["rejected"]
        save_checkpoint(path, snap)
    resume_experiment(out, progress=False)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert _strip_wall(sa) == _strip_wall(sb)
    assert (out / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def test_background_writer_orders_writes_and_reports_its_errors(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path, background=True)
    order: list[str] = []
    state = {"x": torch.zeros(3)}
    path = ck.save("t", 1, state, before=lambda: order.append("before"))
    state["x"] += 1  # the run goes on changing its state: the checkpoint holds the state as it was saved
    ck.wait()
    assert order == ["before"] and torch.equal(load_checkpoint(path)["x"], torch.zeros(3))
    for r in range(2, 6):
        ck.save("t", r, {"round": r})  # each waits for the one before: one checkpoint in flight at most
    ck.wait()
    assert [p.name for p in ck.files("t")] == ["t-r0000005.ckpt", "t-r0000004.ckpt"]

    def full() -> None:
        raise OSError(28, "No space left on device")
    ck.save("t", 6, {"round": 6}, before=full)
    with pytest.raises(OSError, match="No space"):
        ck.wait()
    assert ck.latest("t")[0]["round"] == 5  # nothing lost
    ck.close()
