"""Partitions of a labelled pool among clients: pure functions (labels, num_clients, rng) -> index arrays."""

from __future__ import annotations

import numpy as np

from bouquet.data.federated import DataError


def make_rng(seed: int, *stream: int) -> np.random.Generator:
    """A private numpy generator (never the global RNG); `stream` picks an independent sub-stream."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream]) if stream else seed))


def iid_partition(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle the rows and cut them into `num_clients` sorted index arrays, sizes differing by at most 1."""
    perm = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet_proportions(num_clients: int, num_classes: int, alpha: float,
                          rng: np.random.Generator) -> np.ndarray:
    """Each client's class distribution ~ Dirichlet(alpha * 1), as a `[num_clients, num_classes]` matrix."""
    return rng.dirichlet(np.full(num_classes, float(alpha)), size=num_clients)


def dirichlet_partition(labels: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float = 0.5,
                        min_size: int = 1, proportions: np.ndarray | None = None) -> list[np.ndarray]:
    """Label-skewed partition: class c's rows go to clients in proportion to their Dirichlet weight for c.

    Clients left with fewer than `min_size` rows take random rows from the largest client, so the function
    always terminates (also at tiny alpha). Pass `proportions` (from `dirichlet_proportions`) to split a
    second pool, e.g. the test pool, with the same per-client label distributions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if num_clients * min_size > n:
        raise DataError(f"dirichlet partition: {num_clients} clients x min {min_size} rows need "
                        f"{num_clients * min_size} rows, the pool has {n}; "
                        "lower data.min_train or data.num_clients")
    num_classes = int(labels.max()) + 1 if n else 0
    if proportions is None:
        proportions = dirichlet_proportions(num_clients, max(num_classes, 1), alpha, rng)
    if proportions.shape[0] != num_clients or proportions.shape[1] < num_classes:
        raise DataError(f"dirichlet partition: proportions of shape {proportions.shape} do not cover "
                        f"{num_clients} clients x {num_classes} classes")
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if not len(rows):
            continue
        w = np.nan_to_num(proportions[:, c].astype(np.float64), nan=0.0)
        w = w / w.sum() if w.sum() > 0 else np.full(num_clients, 1.0 / num_clients)
        counts = rng.multinomial(len(rows), w)
        for k, chunk in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
            parts[k].append(chunk)
    result = [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]
    _fill_to_min_size(result, min_size, rng)
    return [np.sort(p).astype(np.int64) for p in result]


def _fill_to_min_size(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> None:
    """Move random rows from the largest parts to parts below `min_size`; each step cuts the deficit."""
    sizes = np.array([len(p) for p in parts])
    while sizes.min() < min_size:
        needy, donor = int(sizes.argmin()), int(sizes.argmax())
        moved = min(min_size - sizes[needy], sizes[donor] - min_size)
        perm = rng.permutation(parts[donor])
        parts[needy] = np.concatenate([parts[needy], perm[:moved]])
        parts[donor] = perm[moved:]
        sizes[needy] += moved
        sizes[donor] -= moved
