"""Filesystem errors at --out, checkpoint and result writing: one ``bouquet: error:`` line naming the path and the
cause, nothing written before lost; warnings as one ``bouquet: warning:`` line.

We run as root in the test container, so ``chmod`` does not stop writes: the cases use a path below a regular
file, an existing file, ``/proc``, and fault injection (``os.fsync`` / ``os.replace`` raising ENOSPC or EROFS).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from bouquet.app.cli import main
from bouquet.engine.checkpoint import CheckpointDir

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "synthetic_linear.toml")
SETS = ["--set", "run.rounds=8", "--set", "run.eval_every=4", "--set", "run.checkpoint_every=2", "--no-progress"]


def _one_line(capsys, code: int, prefix: str = "bouquet: error: ") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def test_out_below_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    line = _one_line(capsys, main(["run", CONFIG, *SETS, "--out", str(tmp_path / "file" / "run")]))
    assert line == (f"bouquet: error: --out {tmp_path}/file/run: cannot create the run directory (Not a directory: "
                    f"{tmp_path}/file is a file, not a directory)")


def test_out_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    line = _one_line(capsys, main(["run", CONFIG, *SETS, "--out", str(tmp_path / "file")]))
    assert f"--out {tmp_path}/file: cannot create the run directory (File exists: {tmp_path}/file is a file" in line
    assert (tmp_path / "file").read_text() == "x"


def test_out_under_proc(capsys) -> None:
    line = _one_line(capsys, main(["run", CONFIG, *SETS, "--out", "/proc/bouquet-run"]))
    assert line.startswith("bouquet: error: --out /proc/bouquet-run: cannot create the run directory (")
    assert "/proc does not allow creating files or directories in it" in line


def test_out_with_a_name_too_long(tmp_path: Path, capsys) -> None:
    out = tmp_path / ("x" * 300)
    line = _one_line(capsys, main(["run", CONFIG, *SETS, "--out", str(out)]))
    assert line == f"bouquet: error: --out {out}: cannot create the run directory (File name too long)"


def test_out_on_a_read_only_file_system(tmp_path: Path, capsys, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr("bouquet.files.os.replace", read_only)
    line = _one_line(capsys, main(["run", CONFIG, *SETS, "--out", str(tmp_path / "run")]))
    assert line.startswith(f"bouquet: error: {tmp_path}/run/config.toml: cannot write (Read-only file system: ")
    assert f"continue with: bouquet run --resume {tmp_path}/run" in line


def _uninterrupted(tmp_path: Path) -> Path:
    out = tmp_path / "reference"
    assert main(["run", CONFIG, *SETS, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("after", [8, 20])  # fsyncs that succeed first: fail in fedavg's checkpoints, in local's
def test_disk_full_mid_run_loses_nothing(tmp_path: Path, capsys, monkeypatch, after: int) -> None:
    reference = _uninterrupted(tmp_path)
    capsys.readouterr()
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr("bouquet.files.os.fsync", fsync)
    out = tmp_path / "run"
    line = _one_line(capsys, main(["run", CONFIG, *SETS, "--out", str(out)]))
    assert ": cannot write (No space left on device: the disk is full); what was written before (checkpoints, " \
        "metrics.jsonl, summary.json) is intact: fix this, then continue with: bouquet run --resume " in line
    assert str(out) in line.split(": cannot write")[0]
    monkeypatch.undo()
    assert CheckpointDir(out / "checkpoints").any()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    strip = lambda s: {a: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in x["per_seed"]]  # noqa: E731
                       for a, x in s["algorithms"].items()}
    assert strip(json.loads((out / "summary.json").read_text())) == \
        strip(json.loads((reference / "summary.json").read_text()))


def test_report_into_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    reference = _uninterrupted(tmp_path)
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    line = _one_line(capsys, main(["report", str(reference), "--out", str(tmp_path / "file" / "report")]))
    assert f"{tmp_path}/file" in line and "is a file, not a directory" in line


def test_checkpoint_warning_is_one_readable_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", CONFIG, *SETS, "--algorithms", "fedavg", "--out", str(out)]) == 0
    newest = CheckpointDir(out / "checkpoints").files("fedavg-seed0")[0]
    newest.write_bytes(newest.read_bytes()[:100])
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"bouquet: warning: {newest}: checksum mismatch (truncated or corrupt file); falling back to "
                     f"an older checkpoint"], lines
