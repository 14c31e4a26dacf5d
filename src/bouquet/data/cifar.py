"""Reader for the CIFAR-10 / CIFAR-100 python-pickle format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from bouquet.data.federated import DataError

CIFAR_FORMAT_HINT = ("CIFAR python format: a pickled dict with 'data' (uint8 [n, 3072], "
                     "channel-major 3x32x32) and 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100)")
CIFAR_FILES = {
    "cifar10": (("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
                ("test_batch",), "labels", 10),
    "cifar100": (("train",), ("test",), "fine_labels", 100),
}


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images `[n, 3, 32, 32]` uint8 and int64 labels of one pickle file; bad files raise `DataError`."""
    if not path.is_file():
        raise DataError(f"expected CIFAR file '{path.name}' in {path.parent}: not found; {CIFAR_FORMAT_HINT}")
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # pickle raises many kinds of errors on corrupt input
        raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: {e}); "
                        f"expected {CIFAR_FORMAT_HINT}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: unpickled a {type(obj).__name__}, expected {CIFAR_FORMAT_HINT}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: missing key 'data' or '{label_key}'; expected {CIFAR_FORMAT_HINT}")
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'data'/'{label_key}' are not arrays ({e}); "
                        f"expected {CIFAR_FORMAT_HINT}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' has dtype {data.dtype} and shape {data.shape}, "
                        f"expected uint8 [n, 3072]; {CIFAR_FORMAT_HINT}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape} labels for {data.shape[0]} images; expected one per image")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images, train labels, test images, test labels of CIFAR-10 or CIFAR-100 in `directory`."""
    train_files, test_files, label_key, num_classes = CIFAR_FILES[name]
    out = []
    for files in (train_files, test_files):
        parts = [read_cifar_batch(directory / f, label_key, num_classes) for f in files]
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return out[0], out[1], out[2], out[3]
