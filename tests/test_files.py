"""bouquet.files: atomic writes get the user's umask (not mkstemp's 0600); the directory lock."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bouquet.app.cli import main
from bouquet.files import DirLock, LockHeld, atomic_write_bytes, atomic_write_json, current_umask


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    with _umask(mask):
        assert current_umask() == mask
        atomic_write_bytes(tmp_path / "a.bin", b"one")
        assert _mode(tmp_path / "a.bin") == mode
        atomic_write_json(tmp_path / "a.bin", {"two": 2})  # replacing keeps the umask's mode and the content
        assert _mode(tmp_path / "a.bin") == mode and b"two" in (tmp_path / "a.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]  # no temporary file left


def test_run_directory_files_are_0644_under_umask_022(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    with _umask(0o022):
        assert main(["run", str(root / "configs" / "synthetic_linear.toml"), "--set", "run.rounds=2", "--set",
                     "run.eval_every=2", "--out", str(out), "--no-progress"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.toml", "metrics.jsonl", "summary.json", "fingerprint.json"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


def test_dir_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with DirLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(LockHeld) as err:
            DirLock(tmp_path).acquire()
        assert err.value.pid == os.getpid()
        lock.release()
        lock.release()  # idempotent
        assert not (tmp_path / ".lock").exists()
        DirLock(tmp_path).acquire().release()


def test_a_failed_atomic_write_names_the_path_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    import errno

    from bouquet.files import WriteError

    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError) as err:
        atomic_write_bytes(tmp_path / "file" / "a.json", b"{}")
    assert str(err.value) == (f"{tmp_path}/file/a.json: cannot write (File exists: {tmp_path}/file is a file, "
                              f"not a directory)")
    atomic_write_bytes(tmp_path / "a.json", b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("bouquet.files.os.fsync", full)
    with pytest.raises(WriteError, match=r"a\.json: cannot write \(No space left on device: the disk is full\)"):
        atomic_write_bytes(tmp_path / "a.json", b"new")
    monkeypatch.undo()
    assert (tmp_path / "a.json").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "file"]  # no temporary file left
