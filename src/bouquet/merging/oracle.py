"""The per-client grid-search oracle for Potara's lambda, on a validation split carved from TRAIN data.

``carve_validation`` holds out part of every client's training rows (never its test rows); the
oracle scores the merged model on that split for every lambda of a grid and keeps the best per
client. Comparing it with the closed form checks the "closed form ~ grid search" claim.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ..algorithms.base import Algorithm, ServerState
from ..data.federated import FederatedDataset
from ..engine.batching import SplitArrays
from ..engine.evaluation import score_params

GRID = tuple(round(0.05 * i, 2) for i in range(21))


def carve_validation(data: FederatedDataset, fraction: float, seed: int = 0) -> tuple[FederatedDataset, SplitArrays]:
    """(data without the validation rows, validation rows as SplitArrays); at least one train row stays."""
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
    return train, SplitArrays.from_dataset(replace(data, clients=tuple(val)), "test")


def lambda_scores(alg: Algorithm, server: ServerState, client_states: dict, arrays: SplitArrays,
                  grid: tuple[float, ...] = GRID, *, chunk: int = 64) -> Tensor:
    """Score [K, G] of every client's merged model for every lambda of ``grid`` (Potara's ``hparams["merge"]``)."""
    merge = alg.hparams["merge"]
    clients = torch.arange(len(arrays.sizes))
    cols = []
    with torch.no_grad():
        for lam in grid:
            value = torch.tensor(float(lam))
            res = score_params(alg, lambda cs, v=value: merge(server, cs, v), client_states, arrays, clients,
                               chunk=chunk)
            cols.append(res.score)
    return torch.stack(cols, dim=1)


def closed_form_lambdas(alg: Algorithm, server: ServerState, client_states: dict) -> Tensor:
    """Each client's closed-form lambda (scalar per client, or [K, L] per layer)."""
    from torch.func import vmap

    with torch.no_grad():
        return vmap(lambda cs: alg.hparams["mixing_weight"](server, cs))(client_states)


def oracle_lambdas(scores: Tensor, grid: tuple[float, ...] = GRID, higher_is_better: bool = True) -> Tensor:
    """The grid value with the best score per client; ties go to the value closest to 0.5 (most merged)."""
    g = torch.tensor(grid, dtype=torch.float64)
    s = scores.to(torch.float64) if higher_is_better else -scores.to(torch.float64)
    best = s.max(dim=1, keepdim=True).values
    tie_break = (s >= best - 1e-12).to(torch.float64) * (1.0 - (g - 0.5).abs())[None]
    return g[tie_break.argmax(dim=1)]
