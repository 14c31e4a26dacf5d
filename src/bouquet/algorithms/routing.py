"""Pieces shared by the routed mixtures (FLoRAL, Ensemble, IFCA): router state, routed averaging, reports.

The server of a mixture method aggregates component c with weights p(k|c) proportional to
n_k * pi_kc, where pi_k is client k's mixture (FLoRAL, Ensemble) or its one-hot choice (IFCA).
Clients upload pi_k as an explicit [C] tensor (``MIXTURE_WEIGHT``): the server learns these C
numbers (the paper's aggregation needs them) but never the router logits themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..metrics import adjusted_rand_index
from .base import Params

ROUTER = "router.logits"
MIXTURE_WEIGHT = "mixture_weight"
# Logit of the clusters a client does not belong to under the optimal-router oracle: exp(-1e4)
# underflows to exactly 0 in float32/float64, so pi is an exact one-hot (the paper uses -100).
ORACLE_OFF = -1e4


def initial_logits(clusters: Tensor, num_components: int, optimal: bool, dtype: torch.dtype,
                   gen: torch.Generator | None = None, init_std: float = 0.0) -> Tensor:
    """Router logits [N, C] of every client: zeros (uniform pi, the paper), N(0, init_std^2) (ours: breaks
    the symmetry between components), or the true cluster's one-hot (oracle)."""
    n = len(clusters)
    if not optimal:
        if init_std > 0:
            return (torch.randn(n, num_components, generator=gen, dtype=torch.float64) * init_std).to(dtype)
        return torch.zeros(n, num_components, dtype=dtype)
    logits = torch.full((n, num_components), ORACLE_OFF, dtype=dtype)
    logits[torch.arange(n), clusters.long() % num_components] = 0.0
    return logits


def routed_mean(stacked: Tensor, weights: Tensor, old: Tensor) -> Tensor:
    """Per-component weighted mean over clients: stacked [K, C, ...], weights [K, C] -> [C, ...].

    A component no client gave weight to (e.g. a cluster absent from the round under the oracle)
    keeps its old value, so the server's pseudo-gradient for it is zero.
    """
    w = weights.to(stacked.dtype)
    denom = w.sum(dim=0)  # [C]
    shape = (*w.shape, *([1] * (stacked.dim() - 2)))
    total = (w.reshape(shape) * stacked).sum(dim=0)
    safe = denom.clamp_min(torch.finfo(stacked.dtype).tiny).reshape(denom.shape + (1,) * (stacked.dim() - 2))
    has = (denom > 0).reshape(safe.shape)
    return torch.where(has, total / safe, old)


def component_weights(mixture: Tensor, num_examples: Tensor) -> Tensor:
    """n_k * pi_kc [K, C]; normalising over k gives the paper's p(k|c) = p(k) p(c|k) / sum_k' p(k') p(c|k')."""
    return num_examples.to(mixture.dtype)[:, None] * mixture


def router_report(clusters_of: Callable[[], Tensor | None], key: str = ROUTER
                  ) -> Callable[[Mapping, Mapping[str, Tensor]], dict]:
    """A ``hparams["report"]`` callable: ARI of each client's argmax component vs its true cluster."""

    def report(server: Mapping, client_states: Mapping[str, Tensor]) -> dict:
        clusters = clusters_of()
        if clusters is None or key not in client_states:
            return {}
        choice = client_states[key].argmax(dim=-1).cpu()
        return {"router_ari": adjusted_rand_index(choice, clusters.cpu()),
                "router_clusters": choice.tolist()}

    return report


def split_named(params: Mapping[str, Tensor], is_routed: Callable[[str], bool]) -> tuple[Params, Params]:
    """(shared, routed) parts of a flat parameter dict."""
    shared = {k: v for k, v in params.items() if not is_routed(k)}
    routed = {k: v for k, v in params.items() if is_routed(k)}
    return shared, routed
