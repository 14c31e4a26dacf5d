"""IID and Dirichlet partitions: exact cover, determinism per seed, termination at tiny alpha."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.data import DataError
from bouquet.data.partition import dirichlet_partition, dirichlet_proportions, iid_partition, make_rng

LABELS = np.repeat(np.arange(10), 100)


def _assert_cover(parts: list[np.ndarray], n: int) -> None:
    allrows = np.concatenate(parts)
    assert len(allrows) == n
    assert np.array_equal(np.sort(allrows), np.arange(n))


def test_iid_covers_and_balances() -> None:
    parts = iid_partition(LABELS, 7, make_rng(0))
    _assert_cover(parts, len(LABELS))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("fn", ["iid", "dirichlet"])
def test_deterministic_per_seed(fn: str) -> None:
    def run(seed: int) -> list[np.ndarray]:
        if fn == "iid":
            return iid_partition(LABELS, 10, make_rng(seed))
        return dirichlet_partition(LABELS, 10, make_rng(seed), alpha=0.5, min_size=10)

    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
def test_dirichlet_covers_with_min_size(alpha: float) -> None:
    parts = dirichlet_partition(LABELS, 50, make_rng(3), alpha=alpha, min_size=10)
    _assert_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_not() -> None:
    def mean_classes(alpha: float) -> float:
        parts = dirichlet_partition(LABELS, 20, make_rng(0), alpha=alpha, min_size=1)
        return float(np.mean([len(np.unique(LABELS[p])) for p in parts]))

    assert mean_classes(0.01) < 4 < 9 < mean_classes(100.0)


def test_dirichlet_infeasible_min_size_raises() -> None:
    with pytest.raises(DataError, match="min_train"):
        dirichlet_partition(LABELS[:50], 10, make_rng(0), min_size=10)


def test_shared_proportions_give_matching_test_distributions() -> None:
    rng = make_rng(0)
    props = dirichlet_proportions(5, 10, 0.05, rng)
    train = dirichlet_partition(LABELS, 5, rng, min_size=0, proportions=props)
    test = dirichlet_partition(LABELS[::5], 5, rng, min_size=0, proportions=props)
    for tr, te in zip(train, test, strict=True):
        h_tr = np.bincount(LABELS[tr], minlength=10) / len(tr)
        h_te = np.bincount(LABELS[::5][te], minlength=10) / len(te)
        assert 0.5 * np.abs(h_tr - h_te).sum() < 0.3  # same label distribution up to sampling noise
