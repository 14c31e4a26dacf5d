"""``metrics.jsonl`` of a run directory: round records appended, tied to the checkpoints by a segment record.

Every (algorithm, seed) run owns one *segment* of the file, its records in round order, one JSON line each.
Records are appended and flushed as they come (a killed process loses none of them: they are in the page
cache) and the file is fsynced before each checkpoint, whose ``metrics`` entry says where the run's segment
starts and how many lines and bytes, with which SHA-256, it held at that moment. The cost of a checkpoint
is therefore independent of the run's length. On ``--resume`` each checkpoint's segment is looked up in
the file as it is on disk and verified (line count and SHA-256); lines written after the checkpoint (the
rounds a resumed run recomputes) are cut off, and a segment that cannot be verified makes that checkpoint
unusable (the run falls back to an older one, or starts again), so records and state never disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..files import WriteError


class MetricsFile:
    """The append-only writer of ``metrics.jsonl``; ``resume`` keeps what is there for the segments to be found."""

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        with self._io():
            self._old = self.path.read_bytes() if resume and self.path.is_file() else b""
            self._file = open(self.path, "r+b" if resume and self.path.is_file() else "wb")  # noqa: SIM115 (close)
        self._valid = len(self._old)  # bytes at the start of the file that still equal self._old
        self.pos = 0  # end of the segments placed so far
        self._seg_start, self._seg_lines, self._hash = 0, 0, hashlib.sha256()
        if not resume:
            self._valid = 0

    # -- segments of checkpoints ----------------------------------------------------------------------
    def locate(self, snap: dict) -> bytes | None:
        """The verified lines of a checkpoint's segment in the file as opened; None when they are not there."""
        seg = snap.get("metrics")
        if seg is None:  # a checkpoint written when checkpoints held the records themselves (format 2)
            records = snap.get("records")
            return None if records is None else b"".join((json.dumps(r) + "\n").encode() for r in records)
        start, size = int(seg["start"]), int(seg["bytes"])
        data = self._old[start:start + size]
        if len(data) != size or data.count(b"\n") != seg["lines"] or hashlib.sha256(data).hexdigest() != seg["sha256"]:
            return None
        return data

    def problem(self, snap: dict) -> str | None:
        """Why a checkpoint's records cannot be found in metrics.jsonl (for CheckpointDir.latest), or None."""
        if self.locate(snap) is None:
            return f"its records are missing from {self.path} (lines lost or changed)"
        return None

    def place(self, data: bytes) -> None:
        """Make ``data`` (a located segment) the next segment, at the current position; it becomes the current one."""
        with self._io():
            end = self.pos + len(data)
            if not (end <= self._valid and self._old[self.pos:end] == data):  # not already in place: write it there
                self._cut()
                self._file.write(data)
                self._file.flush()
            self._seg_start, self._seg_lines, self._hash = self.pos, data.count(b"\n"), hashlib.sha256(data)
            self.pos = end

    def open_segment(self, continued: bool = False) -> None:
        """Start appending at the current position: a new segment, or (``continued``) more lines of the placed one."""
        with self._io():
            if not continued:
                self._seg_start, self._seg_lines, self._hash = self.pos, 0, hashlib.sha256()
            self._cut()

    def _size(self) -> int:
        return self.pos - self._seg_start

    def _cut(self) -> None:
        """Drop everything after the current position (lines a resumed run recomputes, segments that move)."""
        if self._valid > self.pos or self._file.tell() != self.pos:
            self._file.seek(self.pos)
            self._file.truncate()
        self._valid = min(self._valid, self.pos)

    # -- appending ------------------------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Add one record as a line, flushed to the operating system."""
        with self._io():
            line = (json.dumps(record) + "\n").encode()
            self._file.write(line)
            self._file.flush()
            self._hash.update(line)
            self._seg_lines += 1
            self.pos += len(line)

    def mark(self) -> dict[str, Any]:
        """The current segment's record for a checkpoint (start, lines, bytes, SHA-256); ``sync`` before saving it."""
        return {"start": self._seg_start, "lines": self._seg_lines, "bytes": self._size(),
                "sha256": self._hash.hexdigest()}

    def sync(self) -> None:
        """Fsync what was appended (the checkpoint writer calls it before it writes a checkpoint)."""
        with self._io():
            os.fsync(self._file.fileno())

    def finish(self) -> None:
        """Every run is placed or written: cut whatever follows the last segment."""
        with self._io():
            self._cut()

    def close(self, quiet: bool = False) -> None:
        """Flush, fsync and close (idempotent); nothing is cut. ``quiet``: ignore errors (another one is raised)."""
        if self._file.closed:
            return
        try:
            with self._io():
                try:
                    self._file.flush()
                    os.fsync(self._file.fileno())
                finally:
                    self._file.close()
        except WriteError:
            if not quiet:
                raise

    @contextmanager
    def _io(self) -> Iterator[None]:
        """An OSError while reading or writing the file becomes a WriteError naming it."""
        try:
            yield
        except OSError as err:
            raise WriteError(self.path, err) from None
