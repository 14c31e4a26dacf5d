"""Writers of tiny IDX and CIFAR files in the real on-disk formats, for the data tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory: Path, n_train: int = 40, n_test: int = 20, gz: bool = False, seed: int = 0) -> dict:
    """Write train/t10k images and labels; return the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        arrays[prefix] = (images, labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (directory / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return arrays


def write_cifar_dir(directory: Path, name: str, per_file: int = 30, seed: int = 0) -> dict:
    """Write CIFAR-10 (`data_batch_1..5`, `test_batch`) or CIFAR-100 (`train`, `test`) pickles."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        files, key, k = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10
    else:
        files, key, k = ["train", "test"], b"fine_labels", 100
    written = {}
    for f in files:
        n = per_file if name == "cifar10" else (4 * per_file if f == "train" else 2 * per_file)
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(i % k) for i in range(n)]
        batch = {b"data": data, key: labels, b"batch_label": f.encode()}
        if name == "cifar100":
            batch[b"coarse_labels"] = [lab // 5 for lab in labels]
        with (directory / f).open("wb") as fh:
            pickle.dump(batch, fh)
        written[f] = (data, np.array(labels))
    return written
