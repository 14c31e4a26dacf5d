"""IDX and CIFAR readers on tiny files written here; corrupt, truncated and missing files raise DataError."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datafile_writers import idx_bytes, write_cifar_dir, write_idx_dir

from bouquet.data import DataError, DataSpec, build_dataset
from bouquet.data.sources import load_source

FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_dir(tmp_path, gz=gz)
    src = load_source("mnist", str(tmp_path))
    assert src.x_train.shape == (40, 1, 28, 28) and src.x_test.shape == (20, 1, 28, 28)
    assert torch.equal(src.x_train[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(src.y_test, torch.from_numpy(arrays["t10k"][1]).long())
    ds = build_dataset(DataSpec("mnist", 4, path=str(tmp_path)))
    c = ds.clients[0]
    assert ds.input_shape == (1, 28, 28) and ds.num_outputs == 10
    assert c.x_train.dtype == torch.float32 and c.y_train.dtype == torch.int64
    assert float(c.x_train.max()) <= 1.0 and float(c.x_train.min()) >= 0.0
    assert ds.train_sizes().sum() == 40 and ds.test_sizes().sum() == 20
    assert all(int(cl.test_ids.min()) >= 40 for cl in ds.clients)  # test ids follow the train pool


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_source("mnist", str(tmp_path / "nowhere"))
    write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\]' in .*not found") as e:
        load_source("mnist", str(tmp_path))
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("damage", ["magic", "truncated", "extra", "badgzip", "count"])
def test_corrupt_idx(tmp_path: Path, damage: str) -> None:
    write_idx_dir(tmp_path, gz=damage == "badgzip")
    target = tmp_path / "train-images-idx3-ubyte"
    if damage == "magic":
        target.write_bytes(b"\x00\x00\x0d\x03" + target.read_bytes()[4:])
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "extra":
        target.write_bytes(target.read_bytes() + b"\x00")
    elif damage == "badgzip":
        target = tmp_path / "train-images-idx3-ubyte.gz"
        target.write_bytes(target.read_bytes()[:200])
    else:  # label file with a different count
        target = tmp_path / "train-labels-idx1-ubyte"
        target.write_bytes(idx_bytes(np.zeros(39, np.uint8)))
    with pytest.raises(DataError) as e:
        load_source("mnist", str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_cache_sees_rewritten_files(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    load_source("mnist", str(tmp_path))
    target = tmp_path / "train-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:-5])
    os.utime(target, ns=(1, 1))
    with pytest.raises(DataError, match="size mismatch"):
        load_source("mnist", str(tmp_path))


def test_cifar10_roundtrip(tmp_path: Path) -> None:
    written = write_cifar_dir(tmp_path, "cifar10")
    src = load_source("cifar10", str(tmp_path))
    assert src.x_train.shape == (150, 3, 32, 32) and src.x_test.shape == (30, 3, 32, 32)
    first = written["data_batch_1"][0][0]
    assert torch.equal(src.x_train[0, 1].flatten(), torch.from_numpy(first[1024:2048]))  # channel-major
    ds = build_dataset(DataSpec("cifar10", 3, path=str(tmp_path), normalize=True))
    assert ds.input_shape == (3, 32, 32)
    x = torch.cat([c.x_train for c in ds.clients])
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path, "cifar100", per_file=100)
    src = load_source("cifar100", str(tmp_path))
    assert src.num_classes == 100 and int(src.y_train.max()) == 99
    assert src.x_train.shape == (400, 3, 32, 32)


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "wrongshape", "nolabels"])
def test_corrupt_cifar(tmp_path: Path, damage: str) -> None:
    write_cifar_dir(tmp_path, "cifar10")
    target = tmp_path / "data_batch_3"
    if damage == "missing":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(b"not a pickle at all")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    else:
        import pickle

        batch = {"data": np.zeros((5, 100), np.uint8), "labels": [0] * 5}
        if damage == "nolabels":
            batch = {"data": np.zeros((5, 3072), np.uint8)}
        target.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="data_batch_3") as e:
        load_source("cifar10", str(tmp_path))
    assert "CIFAR" in str(e.value)


@pytest.mark.skipif(not Path(FASHION).is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_full() -> None:
    src = load_source("fashion_mnist", FASHION)
    assert src.x_train.shape == (60000, 1, 28, 28) and src.x_test.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(src.y_train), torch.full((10,), 6000))
    assert abs(float(src.x_train.float().mean()) - 72.94) < 0.05
    ds = build_dataset(DataSpec("fashion_mnist", 300, 4, shift="rotate"))
    assert ds.train_sizes().tolist() == [200] * 300
    assert set(ds.test_sizes().tolist()) <= {33, 34}


def test_gz_preferred_name_resolution(tmp_path: Path) -> None:
    arrays = write_idx_dir(tmp_path, gz=True)
    raw = gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    assert raw == idx_bytes(arrays["train"][1])
