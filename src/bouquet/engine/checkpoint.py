"""Checksummed, atomic checkpoints of a run, and a Ctrl-C/SIGTERM handler that stops at a round boundary.

A checkpoint file is ``MAGIC + sha256(body) + "\\n" + body`` where ``body`` is a ``torch.save`` of
plain containers of tensors and Python scalars (loaded back with ``weights_only=True``: a
checkpoint is data, never code). It is written to a temporary file, fsynced and renamed, so a
crash leaves the old file or the new one, never half of one. The last ``keep`` checkpoints of
each (algorithm, seed) are kept: when the newest fails its checksum, the one before is used, with
a warning. ``CheckpointDir(background=True)`` serializes at ``save`` and writes in one writer thread, so
that the run does not wait for the disk (fsyncs) between checkpoints.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write_bytes

MAGIC = b"BOUQUET-CHECKPOINT-1\n"
_NAME = re.compile(r"^(?P<tag>.+)-r(?P<round>\d{7})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a bouquet checkpoint."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or truncated) and an older one used instead."""


def encode_checkpoint(obj: Any) -> bytes:
    """The bytes of a checkpoint file: header, SHA-256 of the body, body (a ``torch.save`` of ``obj``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    body = buf.getvalue()
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def save_checkpoint(path: str | Path, obj: Any) -> None:
    """Serialize ``obj`` with a SHA-256 header and write it atomically (temp file, fsync, rename)."""
    atomic_write_bytes(path, encode_checkpoint(obj))


def load_checkpoint(path: str | Path) -> Any:
    """Read and verify one checkpoint file; raise CheckpointError saying what is wrong with it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a bouquet checkpoint (bad header)")
    head = len(MAGIC)
    digest, body = raw[head:head + 64], raw[head + 65:]
    if len(raw) < head + 65 or hashlib.sha256(body).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt file)")
    try:
        return torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except Exception as err:  # a file with a valid checksum we still cannot read: a version problem
        raise CheckpointError(f"{path}: unreadable checkpoint ({err.__class__.__name__})") from None


class CheckpointDir:
    """The checkpoints of one run directory: ``<tag>-r<round>.ckpt``, the last ``keep`` per tag.

    ``stamp`` entries (e.g. the config fingerprint) are added to every checkpoint saved. With
    ``background``, ``save`` serializes the checkpoint at once (the run may go on changing its state) and
    leaves the writing (fsync, rename, rotation: mostly waiting for the disk) to one writer thread, one
    checkpoint at a time; ``wait`` returns when it is on disk and raises what the writing raised.
    """

    def __init__(self, directory: str | Path, keep: int = 2, stamp: dict | None = None, background: bool = False):
        self.dir = Path(directory)
        self.keep = keep
        self.stamp = dict(stamp or {})
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bouquet-checkpoint") if background else None
        self._pending: Future | None = None

    def path(self, tag: str, round_idx: int) -> Path:
        return self.dir / f"{tag}-r{round_idx:07d}.ckpt"

    def files(self, tag: str) -> list[Path]:
        """This tag's checkpoint files, newest (highest round) first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m["round"]), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name)) and m["tag"] == tag]
        return [p for _, p in sorted(found, reverse=True)]

    def any(self) -> bool:
        return self.dir.is_dir() and any(_NAME.match(p.name) for p in self.dir.iterdir())

    def remove_temporaries(self) -> int:
        """Delete temporary files a killed writer left behind (``.<name>.<random>.tmp``); return how many."""
        if not self.dir.is_dir():
            return 0
        stale = [p for p in self.dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def save(self, tag: str, round_idx: int, obj: Any, before: Callable[[], None] | None = None) -> Path:
        """Write a checkpoint, then delete this tag's checkpoints beyond the newest ``keep``.

        ``before()`` runs first, in the same writer (e.g. fsync the records the checkpoint refers to).
        """
        path = self.path(tag, round_idx)
        data = encode_checkpoint({**obj, **self.stamp} if self.stamp and isinstance(obj, dict) else obj)
        if self._pool is None:
            self._write(tag, path, data, before)
        else:
            self.wait()
            self._pending = self._pool.submit(self._write, tag, path, data, before)
        return path

    def _write(self, tag: str, path: Path, data: bytes, before: Callable[[], None] | None) -> None:
        if before is not None:
            before()
        atomic_write_bytes(path, data)
        for old in self.files(tag)[self.keep:]:
            old.unlink(missing_ok=True)

    def wait(self) -> None:
        """Block until the checkpoint being written (if any) is on disk; raise what writing it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the writer (its errors are not raised here: ``wait`` raises them) and stop it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._pending = None, None

    def latest(self, tag: str, check: Callable[[Any], str | None] | None = None) -> tuple[Any, Path] | None:
        """The newest checkpoint of ``tag`` that verifies (warning about each one skipped), or None.

        ``check(checkpoint)`` may refuse one more: it returns why (e.g. its records are missing), or None.
        """
        self.wait()
        for path in self.files(tag):
            try:
                obj = load_checkpoint(path)
            except CheckpointError as err:
                warnings.warn(f"{err}; falling back to an older checkpoint", CheckpointWarning, stacklevel=2)
                continue
            problem = check(obj) if check is not None else None
            if problem is None:
                return obj, path
            warnings.warn(f"{path}: {problem}; falling back to an older checkpoint", CheckpointWarning, stacklevel=2)
        return None


# -- random number generators -------------------------------------------------------------------

def rng_state() -> dict:
    """Every global RNG a round may draw from: torch (CPU and CUDA), NumPy and Python's ``random``."""
    version, internal, gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"name": np_name, "key": torch.from_numpy(np_key.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: the first SIGINT or SIGTERM asks the run to stop after the current round; a second aborts.

    ``signum`` is the signal received (None before one); ``exit_code`` the status to exit with, 128 + signum
    (130 for SIGINT, 143 for SIGTERM). Outside the main thread (where signal handlers cannot be installed)
    it does nothing and the signals act as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 when no signal was received)."""
        return 128 + (self.signum or signal.SIGINT)

    @property
    def reason(self) -> str:
        """How the run was stopped, for messages: 'interrupted' (SIGINT) or 'terminated (SIGTERM)'."""
        return "terminated (SIGTERM)" if self.signum == signal.SIGTERM else "interrupted"

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise StopAborted(128 + signum)
        self.requested, self.signum = True, signum
        again = "Ctrl-C again" if signum == signal.SIGINT else "SIGTERM again"
        print(f"\nbouquet: {signal.Signals(signum).name}: stopping after this round to write a checkpoint "
              f"({again} to abort)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on Ctrl-C or SIGTERM after writing a checkpoint; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class StopAborted(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: the run aborts at once; ``exit_code`` is 128 + the signal number."""

    def __init__(self, exit_code: int = 130):
        super().__init__()
        self.exit_code = exit_code
