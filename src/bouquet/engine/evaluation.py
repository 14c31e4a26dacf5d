"""Evaluation of every client's personalized model on its own test split, and the summary statistics.

Personalized parameters are built inside the vmapped function, so a shared model is never copied
per client; clients are processed in chunks to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from ..algorithms import Algorithm
from ..algorithms.contract import ClientStates, ServerState, client_score, task_loss
from .batching import SplitArrays, padded_split
from .chunk_threads import map_chunks, resolve_workers


@dataclass(frozen=True)
class ClientScores:
    """Per-client results: ``score`` is accuracy (classification), MSE (regression) or perplexity (LM)."""

    score: Tensor
    loss: Tensor
    num_examples: Tensor


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield torch.arange(start, min(n, start + size))


def _score_in_chunks(arrays: SplitArrays, clients: Tensor, client_states: ClientStates, chunk: int,
                     score, workers: int = 1) -> ClientScores:
    """``score(states, batch) -> (score [K], loss [K])`` over ``clients`` ``chunk`` at a time (``workers``
    chunks at once, ``chunk_threads``), each client's rows of ``arrays`` padded to the chunk's longest."""

    def one(part: Tensor) -> tuple[Tensor, Tensor]:
        ids = clients[part]
        index, weight = padded_split(arrays, ids)
        return score({k: v[ids] for k, v in client_states.items()}, arrays.gather(index, weight))

    pairs = map_chunks(one, list(_chunks(len(clients), chunk)), workers)
    return ClientScores(torch.cat([p[0] for p in pairs]).cpu(), torch.cat([p[1] for p in pairs]).cpu(),
                        arrays.sizes[clients])


def score_params(alg: Algorithm, params_fn, client_states: ClientStates, arrays: SplitArrays,
                 clients: Tensor, *, vectorized: bool = True, chunk: int = 64) -> ClientScores:
    """Score ``params_fn(client_state) -> params`` of each client on its rows of ``arrays``."""

    def one(cs, x, y, w):
        return client_score(alg.apply(params_fn(cs), x), y, w, alg.objective)

    def score(states, batch):
        if vectorized:
            return vmap(one, randomness="different")(states, batch["x"], batch["y"], batch["w"])
        pairs = []
        for j in range(batch["w"].shape[0]):
            keep = batch["w"][j] > 0
            cs = {k: v[j] for k, v in states.items()}
            pairs.append(one(cs, batch["x"][j][keep], batch["y"][j][keep], batch["w"][j][keep]))
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    return _score_in_chunks(arrays, clients, client_states, chunk, score)


def score_forward(alg: Algorithm, forward, server: ServerState, client_states: ClientStates, arrays: SplitArrays,
                  clients: Tensor, *, chunk: int = 10, workers: int = 0) -> ClientScores:
    """Score each client's personalized model with a batched ``forward(params [K, ...], x [K, T, ...])``
    (the conv kernels' forward), ``chunk`` clients at a time, ``workers`` chunks at once (0: one per
    intra-op thread on CPU)."""

    def score(states, batch):
        out = forward(personalized_params(alg, server, states, batch["w"].shape[0]), batch["x"])
        return vmap(lambda o, y, w: client_score(o, y, w, alg.objective))(out, batch["y"], batch["w"])

    return _score_in_chunks(arrays, clients, client_states, chunk, score,
                            resolve_workers(workers, arrays.y.device))


def candidate_losses(forward, candidates: dict[str, Tensor], batches: dict[str, Tensor], objective: str, *,
                     chunk: int = 1, workers: int = 0) -> Tensor:
    """Every client's task loss [K, C] on its batches [K, S, B, ...] under each of C candidate models stacked
    [C, ...] (IFCA's choice), by a batched ``forward`` ``chunk`` clients at a time, ``workers`` chunks at once."""
    num_models = next(iter(candidates.values())).shape[0]
    x, y, w = (batches[n].flatten(1, 2) for n in ("x", "y", "w"))

    def one(part: Tensor) -> Tensor:
        per_model = []
        for c in range(num_models):
            params = {k: v[c].expand(len(part), *v.shape[1:]) for k, v in candidates.items()}
            out = forward(params, x[part])
            per_model.append(vmap(lambda o, t, m: task_loss(o, t, m, objective))(out, y[part], w[part]))
        return torch.stack(per_model, dim=1)

    with torch.no_grad():
        parts = map_chunks(one, list(_chunks(x.shape[0], chunk)), resolve_workers(workers, x.device))
    return torch.cat(parts)


def personalized_params(alg: Algorithm, server: ServerState, client_states: ClientStates,
                        num_clients: int) -> dict[str, Tensor]:
    """Personalized parameters of ``num_clients`` clients, stacked [K, ...] (no gradient).

    Algorithms without client state (FedAvg) personalize every client alike; their one model is
    repeated so that callers always get one row per client.
    """
    with torch.no_grad():
        if client_states:
            return vmap(lambda cs: alg.personalize(server, cs))(client_states)
        one = alg.personalize(server, {})
        return {k: v.unsqueeze(0).expand(num_clients, *v.shape).clone() for k, v in one.items()}


def summarize(scores: ClientScores, clusters: Tensor) -> dict:
    """Example-weighted mean and std over clients, per-cluster means, per-client values."""
    w = scores.num_examples.to(torch.float64)
    s = scores.score.to(torch.float64)
    total = w.sum().clamp_min(1.0)
    mean = float((w * s).sum() / total)
    std = float(((w * (s - mean) ** 2).sum() / total).sqrt())
    per_cluster = {}
    for c in sorted(set(clusters.tolist())):
        m = clusters == c
        per_cluster[str(c)] = float((w[m] * s[m]).sum() / w[m].sum().clamp_min(1.0))
    loss = float((w * scores.loss.to(torch.float64)).sum() / total)
    return {"mean": mean, "std": std, "loss": loss, "per_cluster": per_cluster,
            "per_client": [round(float(v), 6) for v in s]}
