"""The per-client grid-search oracle for a merging algorithm's lambda (Potara), on validation rows.

The validation rows are carved from TRAIN data (``data.carve_validation``), never from test rows; the
oracle scores the merged model on them for every lambda of a grid and keeps the best per client.
Comparing it with the closed form checks the "closed form ~ grid search" claim.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from ..algorithms import Algorithm
from ..algorithms.contract import ServerState
from .batching import SplitArrays
from .evaluation import score_params

GRID = tuple(round(0.05 * i, 2) for i in range(21))


def lambda_grid(alg: Algorithm, server: ServerState, client_states: dict, arrays: SplitArrays,
                grid: tuple[float, ...] = GRID, *, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """(score, mean NLL), each [K, G], of every client's merged model for every lambda of ``grid``."""
    merge = _merging(alg).merge
    clients = torch.arange(len(arrays.sizes))
    scores, losses = [], []
    with torch.no_grad():
        for lam in grid:
            value = torch.tensor(float(lam))
            res = score_params(alg, lambda cs, v=value: merge(server, cs, v), client_states, arrays, clients,
                               chunk=chunk)
            scores.append(res.score)
            losses.append(res.loss)
    return torch.stack(scores, dim=1), torch.stack(losses, dim=1)


def lambda_scores(alg: Algorithm, server: ServerState, client_states: dict, arrays: SplitArrays,
                  grid: tuple[float, ...] = GRID, *, chunk: int = 64) -> Tensor:
    """Score [K, G] of every client's merged model for every lambda of ``grid`` (``alg.merging.merge``)."""
    return lambda_grid(alg, server, client_states, arrays, grid, chunk=chunk)[0]


def merge_terms(alg: Algorithm, server: ServerState, client_states: dict) -> dict[str, Tensor]:
    """The quantities each client's lambda is computed from (``Merging.terms``), stacked [K, ...]."""
    terms = _merging(alg).terms
    if terms is None:
        raise ValueError(f"algorithm {alg.name!r} does not expose its lambda's terms")
    with torch.no_grad():
        return vmap(lambda cs: terms(server, cs))(client_states)


def merge_diagnostics(alg: Algorithm, server: ServerState, client_states: dict, val: SplitArrays,
                      grid: tuple[float, ...] = GRID, *, higher_is_better: bool = True, chunk: int = 64) -> dict:
    """Per client: the lambda terms (a, b, c, d^2, bias, eta/2B, lambda), the score and NLL along ``grid``
    on ``val`` (the linear-mode-connectivity curve), and the score- and NLL-oracle lambdas.

    For choosing anything ``val`` must be validation rows carved from training rows, never test rows.
    ``higher_is_better``: the score is an accuracy (True) or an error / perplexity (False).
    """
    score, nll = lambda_grid(alg, server, client_states, val, grid, chunk=chunk)
    out = {k: v.tolist() for k, v in merge_terms(alg, server, client_states).items()}
    out.update({"grid": list(grid), "val_accuracy": score.tolist(), "val_nll": nll.tolist(),
                "lambda_acc_oracle": oracle_lambdas(score, grid, higher_is_better).tolist(),
                "lambda_nll_oracle": oracle_lambdas(nll, grid, higher_is_better=False).tolist()})
    return out


def closed_form_lambdas(alg: Algorithm, server: ServerState, client_states: dict) -> Tensor:
    """Each client's closed-form lambda (scalar per client, or [K, L] per layer)."""
    weight = _merging(alg).weight
    with torch.no_grad():
        return vmap(lambda cs: weight(server, cs))(client_states)


def oracle_lambdas(scores: Tensor, grid: tuple[float, ...] = GRID, higher_is_better: bool = True) -> Tensor:
    """The grid value with the best score per client; ties go to the value closest to 0.5 (most merged)."""
    g = torch.tensor(grid, dtype=torch.float64)
    s = scores.to(torch.float64) if higher_is_better else -scores.to(torch.float64)
    best = s.max(dim=1, keepdim=True).values
    tie_break = (s >= best - 1e-12).to(torch.float64) * (1.0 - (g - 0.5).abs())[None]
    return g[tie_break.argmax(dim=1)]


def _merging(alg: Algorithm):
    if alg.merging is None:
        raise ValueError(f"algorithm {alg.name!r} does not merge models (no Merging hooks): no lambda to score")
    return alg.merging
