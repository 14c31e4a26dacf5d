"""build_dataset on real bundled sources and tiny files: shapes, disjointness, shifts, sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bouquet.data import ClientData, DataError, DataSpec, build_dataset
from bouquet.data.sources import load_source
from bouquet.data.transforms import rotate_images


def _disjoint(c: ClientData) -> bool:
    return not set(c.train_ids.tolist()) & set(c.test_ids.tolist())


@pytest.mark.parametrize(("name", "shape"), [("digits", (1, 8, 8)), ("mnist5k", (1, 28, 28))])
def test_bundled_shapes_and_disjointness(name: str, shape: tuple) -> None:
    ds = build_dataset(DataSpec(name, 12, 3))
    assert ds.input_shape == shape and ds.num_outputs == 10 and ds.objective == "classification"
    used = [set(c.train_ids.tolist()) | set(c.test_ids.tolist()) for c in ds.clients]
    assert sum(len(u) for u in used) == load_source(name).num_pool  # every row used exactly once
    for c in ds.clients:
        assert c.x_train.dtype == torch.float32 and c.x_train.shape[1:] == shape
        assert c.y_train.dtype == torch.int64
        assert _disjoint(c)
        assert float(c.x_train.min()) >= 0.0 and float(c.x_train.max()) <= 1.0
        assert abs(c.num_test - 0.2 * (c.num_train + c.num_test)) <= 1
    assert [c.cluster for c in ds.clients] == [k % 3 for k in range(12)]


def test_rotate_matches_rot90_through_ids() -> None:
    ds = build_dataset(DataSpec("digits", 8, 4, shift="rotate"))
    src = load_source("digits")
    for k in range(4):
        c = ds.clients[k]
        raw, _ = src.gather(c.train_ids)
        assert torch.equal(c.x_train, torch.rot90(raw, k, dims=(-2, -1)))
    assert ds.meta["rotation_degrees"] == [0.0, 90.0, 180.0, 270.0]


def test_bilinear_rotation_agrees_with_rot90() -> None:
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(rotate_images(x, 90.0 + 1e-6), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4)
    ds = build_dataset(DataSpec("digits", 6, 3, shift="rotate"))
    c = ds.clients[1]
    raw, _ = load_source("digits").gather(c.train_ids)
    assert torch.allclose(c.x_train, rotate_images(raw, 120.0))
    assert not torch.allclose(c.x_train, raw)


def test_label_shift() -> None:
    ds = build_dataset(DataSpec("digits", 8, 4, shift="label_shift"))
    src = load_source("digits")
    for c in ds.clients:
        _, y = src.gather(c.train_ids)
        assert torch.equal(c.y_train, (y + c.cluster) % 10)
        raw, _ = src.gather(c.test_ids)
        assert torch.equal(c.x_test, raw)  # images untouched


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_cifar100_groups(cifar100_dir: Path, partition: str) -> None:
    spec = DataSpec("cifar100", 20, 10, shift="cifar100_groups", partition=partition, path=str(cifar100_dir),
                    min_train=2)
    ds = build_dataset(spec)
    assert ds.num_outputs == 100
    for c in ds.clients:
        assert c.num_train > 0
        for y in (c.y_train, c.y_test):
            assert torch.all(y % 10 == c.cluster)


def test_dirichlet_build_min_train_and_tiny_alpha() -> None:
    ds = build_dataset(DataSpec("digits", 30, 3, partition="dirichlet", alpha=0.01, min_train=10))
    assert int(ds.train_sizes().min()) >= 10
    assert all(_disjoint(c) for c in ds.clients)


def test_dirichlet_test_pool(idx_dir: Path) -> None:
    ds = build_dataset(DataSpec("mnist", 3, partition="dirichlet", alpha=0.3, min_train=3, path=str(idx_dir)))
    assert int(ds.test_sizes().sum()) == 20 and int(ds.train_sizes().sum()) == 40


def test_fraction_keeps_min_train() -> None:
    full = build_dataset(DataSpec("mnist5k", 10))
    small = build_dataset(DataSpec("mnist5k", 10, fraction=0.05))
    tiny = build_dataset(DataSpec("mnist5k", 10, fraction=0.001, min_train=7))
    assert full.train_sizes().tolist() == [400] * 10
    assert small.train_sizes().tolist() == [20] * 10
    assert tiny.train_sizes().tolist() == [7] * 10
    for f, s in zip(full.clients, small.clients, strict=True):
        assert set(s.train_ids.tolist()) <= set(f.train_ids.tolist())
        assert torch.equal(s.test_ids, f.test_ids)


def test_exact_sizes_mnist5k_300_clients() -> None:
    ds = build_dataset(DataSpec("mnist5k", 300, 4, shift="rotate", train_per_client=10))
    assert ds.train_sizes().tolist() == [10] * 300
    assert set(ds.test_sizes().tolist()) <= {6, 7}
    ids = torch.cat([torch.cat([c.train_ids, c.test_ids]) for c in ds.clients])
    assert len(set(ids.tolist())) == len(ids) == 5000


def test_resample_stays_inside_split() -> None:
    with pytest.raises(DataError, match=r"data\.train_per_client.*resample"):
        build_dataset(DataSpec("digits", 100, train_per_client=50))
    ds = build_dataset(DataSpec("digits", 100, train_per_client=50, test_per_client=20, resample=True))
    assert ds.train_sizes().tolist() == [50] * 100 and ds.test_sizes().tolist() == [20] * 100
    all_train = set().union(*(set(c.train_ids.tolist()) for c in ds.clients))
    all_test = set().union(*(set(c.test_ids.tolist()) for c in ds.clients))
    assert not all_train & all_test
    assert len(set(ds.clients[0].train_ids.tolist())) < 50  # repeats within the split


def test_deterministic_per_seed() -> None:
    a = build_dataset(DataSpec("digits", 5, seed=1))
    b = build_dataset(DataSpec("digits", 5, seed=1))
    c = build_dataset(DataSpec("digits", 5, seed=2))
    assert torch.equal(a.clients[2].train_ids, b.clients[2].train_ids)
    assert not torch.equal(a.clients[2].train_ids, c.clients[2].train_ids)


def test_too_many_clusters_for_label_shift() -> None:
    with pytest.raises(DataError, match=r"data\.num_clusters"):
        build_dataset(DataSpec("digits", 20, 12, shift="label_shift"))


def test_check_rejects_cross_client_leak() -> None:
    import dataclasses

    ds = build_dataset(DataSpec("digits", 3))
    a, b = ds.clients[0], ds.clients[1]
    leaky = dataclasses.replace(b, test_ids=torch.cat([b.test_ids[:-1], a.train_ids[:1]]))
    bad = dataclasses.replace(ds, clients=(a, leaky, ds.clients[2]))
    with pytest.raises(DataError, match="across clients"):
        bad.check()
