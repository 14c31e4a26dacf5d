"""FLoRAL synthetic tasks: sample counts and exact per-cluster linear structure."""

from __future__ import annotations

import torch

from bouquet.data import DataSpec, build_dataset
from bouquet.data.synthetic import cluster_weight, synthetic_parameters


def _residual(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """Relative residual of an affine least-squares fit on pooled data."""
    x = torch.cat(xs).double()
    y = torch.cat(ys).double()
    a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(a, y).solution
    return float((a @ sol - y).norm() / y.norm())


def test_linear_counts_and_shapes() -> None:
    ds = build_dataset(DataSpec("synthetic_linear", 10, 2))
    assert ds.objective == "regression" and ds.input_shape == (10,) and ds.num_outputs == 3
    assert ds.train_sizes().tolist() == [7] * 10 and ds.test_sizes().tolist() == [1] * 10
    c = ds.clients[3]
    assert c.cluster == 1 and c.y_train.shape == (7, 3) and c.y_train.dtype == torch.float32
    assert ds.meta["samples_per_client"] == 8 and ds.meta["model_params"] == 33


def test_mlp_counts() -> None:
    ds = build_dataset(DataSpec("synthetic_mlp", 20, 4))
    assert ds.train_sizes().tolist() == [96] * 20 and ds.test_sizes().tolist() == [24] * 20
    assert ds.num_outputs == 1 and ds.meta["model_params"] == 241


def test_linear_cluster_structure_is_exact() -> None:
    ds = build_dataset(DataSpec("synthetic_linear", 10, 2, seed=5))
    by_cluster: dict[int, list] = {0: [], 1: []}
    for c in ds.clients:
        by_cluster[c.cluster].append(c)
    for members in by_cluster.values():  # 5 clients x 8 rows = 40 >= 11 unknowns per output
        xs = [t for c in members for t in (c.x_train, c.x_test)]
        ys = [t for c in members for t in (c.y_train, c.y_test)]
        assert _residual(xs, ys) < 1e-5
    mixed = [ds.clients[k] for k in range(10)]
    assert _residual([c.x_train for c in mixed], [c.y_train for c in mixed]) > 0.05


def test_mlp_clusters_share_the_function() -> None:
    ds = build_dataset(DataSpec("synthetic_mlp", 8, 4, seed=1))
    p = synthetic_parameters("synthetic_mlp", 4, 1)
    for c in ds.clients:
        h = torch.relu(c.x_train.double() @ cluster_weight(p, c.cluster) + p["b"]) @ p["W_out"]
        assert torch.allclose(h.float(), c.y_train, atol=1e-5)
    assert not torch.equal(cluster_weight(p, 0), cluster_weight(p, 1))


def test_seeds() -> None:
    a = build_dataset(DataSpec("synthetic_linear", 4, 2, seed=0))
    b = build_dataset(DataSpec("synthetic_linear", 4, 2, seed=0))
    c = build_dataset(DataSpec("synthetic_linear", 4, 2, seed=1))
    assert torch.equal(a.clients[1].y_train, b.clients[1].y_train)
    assert not torch.equal(a.clients[1].y_train, c.clients[1].y_train)


def test_mlp_teacher_is_the_official_shape() -> None:
    # Official generator: W is dim x dim (teacher hidden layer 10 wide, not the student's 20), W_out ~ N(0, 1/10).
    p = synthetic_parameters("synthetic_mlp", 4, 0)
    assert p["W"].shape == (10, 10) and p["b"].shape == (10,) and p["v"].shape == (4, 10, 1)
    assert p["W_out"].shape == (10, 1)
    many = torch.cat([synthetic_parameters("synthetic_mlp", 4, s)["W_out"] for s in range(200)])
    assert abs(float(many.var()) - 0.1) < 0.02
    ds = build_dataset(DataSpec("synthetic_mlp", 4, 4))
    assert ds.meta["teacher_hidden"] == 10 and ds.meta["hidden"] == 20 and ds.meta["model_params"] == 241
