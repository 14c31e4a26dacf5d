"""Trace estimators: per-example Fisher against a loop, Laplace/SGD traces, iterate moments, client spread."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from bouquet.merging.estimators import (
    client_spread,
    diagonal_fisher,
    iterate_trace,
    laplace_trace,
    sgd_trace,
    update_moments,
)


def _loglik(params, x, y):
    return -F.cross_entropy(x @ params["w"].T + params["b"], y)


def test_diagonal_fisher_matches_a_per_example_loop_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)}
    x, y = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    w = torch.tensor([1.0, 1, 1, 1, 0, 0])
    fisher = diagonal_fisher(_loglik, params, x, y, w)
    expect = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(4):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        _loglik(p, x[i:i + 1], y[i:i + 1]).backward()
        for k in p:
            expect[k] += p[k].grad ** 2 / 4
    for k in params:
        assert torch.allclose(fisher[k], expect[k], atol=1e-6)
    # vmappable over clients
    batched = vmap(lambda xx: diagonal_fisher(_loglik, params, xx, y, w))(torch.stack([x, x]))
    assert torch.allclose(batched["w"][1], fisher["w"], atol=1e-6)


def test_laplace_and_sgd_traces():
    fisher = {"a.lora_A": torch.tensor([1.0, 0.0]), "a.lora_B": torch.tensor([3.0]), "b.lora_A": torch.tensor([2.0])}
    n, d = 10.0, 0.5
    assert float(laplace_trace(fisher, n, d, weighted=False)) == pytest.approx(1 / 10.5 + 1 / 0.5 + 1 / 30.5 + 1 / 20.5)
    assert float(laplace_trace(fisher, n, d)) == pytest.approx(1 / 10.5 + 0 + 3 / 30.5 + 2 / 20.5)
    per_layer = laplace_trace(fisher, n, d, ["a", "b"])
    assert per_layer.shape == (2,) and float(per_layer[1]) == pytest.approx(2 / 20.5)
    assert float(sgd_trace(fisher, 0.1, 5)) == pytest.approx(0.1 / 10 * 6)
    assert float(sgd_trace(fisher, 0.1, 5, scale=0.5)) == pytest.approx(0.1 / 10 * 3)


def test_iterate_moments_give_the_sample_variance_within_the_window():
    seq = [torch.tensor([1.0, 5.0]), torch.tensor([3.0, 5.0]), torch.tensor([8.0, 5.0])]
    first, second = {"p": torch.zeros(2)}, {"p": torch.zeros(2)}
    for i, v in enumerate(seq):
        first, second = update_moments(first, second, {"p": v}, torch.tensor(float(i)), window=10)
    stacked = torch.stack(seq)
    assert torch.allclose(first["p"], stacked.mean(0))
    assert float(iterate_trace(first, second)) == pytest.approx(float(stacked.var(0, unbiased=False).sum()), rel=1e-5)


def test_client_spread_is_the_variance_of_the_weighted_mean():
    u = {"x.lora_A": torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0], [7.0, 0.0]])}
    equal = client_spread(u, torch.ones(4))
    assert float(equal) == pytest.approx(5.0 / 4)  # population variance 5 of [1,3,5,7], over K = 4
    # all weight on one client: a single point has no spread
    assert float(client_spread(u, torch.tensor([1.0, 0, 0, 0]))) == pytest.approx(0.0)
