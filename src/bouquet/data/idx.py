"""Reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzipped, with strict checks."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from bouquet.data.federated import DataError

IDX_FORMAT_HINT = ("IDX format: 2 zero bytes, type byte 0x08 (uint8), number of dims, "
                   "big-endian uint32 sizes, then the uint8 payload")


def find_idx_file(directory: Path, stem: str) -> Path:
    """The file `stem` or `stem.gz` inside `directory`; raise `DataError` when neither exists."""
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"expected IDX file '{stem}[.gz]' in {directory}: not found; see docs for the format "
                    f"({IDX_FORMAT_HINT})")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one uint8 IDX file with `ndim` dimensions; corrupt or truncated files raise `DataError`."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; expected a (gzipped) {IDX_FORMAT_HINT}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        got = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(f"{path}: wrong magic number {got}, expected 000008{ndim:02x} "
                        f"(uint8, {ndim} dims); {IDX_FORMAT_HINT}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes); {IDX_FORMAT_HINT}")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(f"{path}: size mismatch, header says shape {shape} ({expected} bytes) "
                        f"but the payload has {len(raw) - header} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `[n, 28, 28]` and labels `[n]` of split `prefix` ('train' or 't10k')."""
    images_path = find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in "
                        f"{images_path}; expected one label per image")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return images, labels
