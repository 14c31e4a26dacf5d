"""Validation rows carved from each client's training rows (never from its test rows), for model selection."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .federated import FederatedDataset


def carve_validation(data: FederatedDataset, fraction: float,
                     seed: int = 0) -> tuple[FederatedDataset, FederatedDataset]:
    """(data without the validation rows, the validation rows as each client's test split); at least one
    training row stays per client."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    kept, val = [], []
    for k, c in enumerate(data.clients):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k, 31]))
        order = torch.from_numpy(rng.permutation(c.num_train))
        n_val = min(c.num_train - 1, max(1, round(fraction * c.num_train)))
        v, t = order[:n_val].sort().values, order[n_val:].sort().values
        kept.append(replace(c, x_train=c.x_train[t], y_train=c.y_train[t], train_ids=c.train_ids[t]))
        val.append(replace(c, x_test=c.x_train[v], y_test=c.y_train[v], test_ids=c.train_ids[v]))
    train = replace(data, clients=tuple(kept), meta={**data.meta, "validation_fraction": fraction})
    return train, replace(data, clients=tuple(val), meta={**data.meta, "split": "validation"})


def validation_as_test(data: FederatedDataset, fraction: float, seed: int = 0) -> FederatedDataset:
    """The federation for choosing settings: each client trains on its training rows less `fraction` of them
    and is evaluated on those carved rows; its test rows are dropped, so nothing can be chosen on them."""
    train, val = carve_validation(data, fraction, seed)
    clients = tuple(replace(t, x_test=v.x_test, y_test=v.y_test, test_ids=v.test_ids)
                    for t, v in zip(train.clients, val.clients, strict=True))
    return replace(train, clients=clients, meta={**train.meta, "split": "validation"})
