"""Files written atomically (a crash leaves the old file or the new one, never half of one), and a directory lock.

New files get the mode the user's umask gives (``0o666 & ~umask``, like ``open()``), not mkstemp's 0600.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only a fallback)
    os.umask(mask)
    return mask


class WriteError(OSError):
    """Writing (or creating) ``path`` failed; ``str()`` is one line naming the path and the cause."""

    def __init__(self, path: str | Path, err: OSError):
        super().__init__(err.errno, err.strerror)
        self.path, self.reason = Path(path), os_error_reason(err, path)

    def __str__(self) -> str:
        return f"{self.path}: cannot write ({self.reason})"


def os_error_reason(err: OSError, path: str | Path) -> str:
    """What an OSError at ``path`` means, in words: the system's message, and which file is in the way."""
    path = Path(path)
    text = err.strerror or str(err)
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{text}: {blocker} is a file, not a directory"
    if err.errno == errno.ENOENT and path.parent.is_dir():
        return f"{text}: {path.parent} does not allow creating files or directories in it"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{text}: the disk is full"
    if err.errno == errno.EROFS:
        return f"{text}: {path} is on a read-only file system"
    return text


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``.

    Any OSError becomes a WriteError naming ``path`` (the old file, if any, is left as it was).
    """
    try:
        _atomic_write_bytes(Path(path), data)
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(path, err) from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a file gets the mode open() would give it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_toml(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as TOML, atomically."""
    atomic_write_bytes(path, tomli_w.dumps(obj).encode())


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Rewrite a whole JSON-lines file atomically (so a crash never leaves half a line)."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


class LockHeld(RuntimeError):
    """Another live process holds the lock; ``pid`` is its process id (None when it could not be read)."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path}: held by PID {pid}" if pid else f"{path}: held by another process")
        self.path, self.pid = path, pid


class DirLock:
    """Exclusive lock on a directory: ``flock`` on ``DIR/.lock``, which holds the owner's PID.

    The kernel releases a ``flock`` when its holder dies, so the lock file of a dead process (a stale lock)
    is simply taken over. ``release`` (or leaving the ``with`` block) unlinks the file and unlocks.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        """Take the lock or raise LockHeld naming the holder's PID."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise LockHeld(self.path, int(holder) if holder.isdigit() else None) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous holder unlinked while we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
