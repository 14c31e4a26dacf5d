"""Pieces shared by the routed mixtures (FLoRAL, Ensemble, IFCA): router state, routed averaging, reports.

The server of a mixture method aggregates component c with weights p(k|c) proportional to
n_k * pi_kc, where pi_k is client k's mixture (FLoRAL, Ensemble) or its one-hot choice (IFCA).
Clients upload pi_k as an explicit [C] tensor (``MIXTURE_WEIGHT``): the server learns these C
numbers (the paper's aggregation needs them) but never the router logits themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..checks import require
from ..metrics import adjusted_rand_index

ROUTER = "router.logits"
SELECTIONS = ("gradient", "loss", "em")


@dataclass(frozen=True)
class RouterConfig:
    """A private router: how logits become pi and how they learn. The one home of these settings.

    TOML: the ``router_*`` keys of an ``[algo.<name>]`` table (``router_lr``, ``router_temperature``...).
    Training forward: pi = softmax((logits + noise * U[0, 1)) / temperature), clamped from below at
    ``floor`` (no renormalisation); evaluation: the same without noise. The loss subtracts
    ``entropy`` * H(pi). Ours, beyond the paper: ``init_std`` (random initial logits), ``steps``
    (router-only steps before each local round), ``select = "loss"`` (one-hot on the lowest-loss component),
    ``select = "em"`` (an EM step per visit: pi_c proportional to pi_c exp(-n_k loss_c), mixed with
    ``explore`` of the uniform mixture so no component is ever ruled out), ``revive`` (the server splits a
    merged component into a dead one: ``algorithms.revival``).
    """

    #: router learning rate (logits' SGD step)
    lr: float = 0.1
    #: training-time noise added to the logits: noise * U[0, 1) (official code: 1.0)
    noise: float = 0.0  # official: 1.0
    #: lower clamp of pi during training, no renormalisation (official code: 0.01)
    floor: float = 0.0  # official: 0.01
    #: softmax temperature of the logits
    temperature: float = 1.0
    #: weight of -H(pi) in the loss: > 0 pushes pi towards uniform, < 0 towards one-hot
    entropy: float = 0.0  # > 0 pushes pi towards uniform, < 0 towards one-hot
    #: std of random initial logits (0: uniform pi, the paper)
    init_std: float = 0.0  # paper: 0 (uniform pi)
    #: router-only steps before each local round (ours)
    steps: int = 0
    #: 'gradient' (learned pi), 'loss' (one-hot on the lowest-loss component) or 'em' (soft responsibilities)
    select: str = "gradient"
    #: router_select = 'em': share of the uniform mixture mixed into each responsibility (exploration)
    explore: float = 0.05
    #: routers chosen by loss: split the most used component into one whose share of the examples fell below
    #: this fraction of the fair share 1/C (0: off; ours, ``algorithms.revival``)
    revive: float = 0.0
    #: rounds during which the two halves of a split are offered to visiting clients at equal prior
    revive_window: int = 30

    def check(self, s: str) -> None:
        require(self.lr >= 0, f"{s}.router_lr", "a number >= 0", self.lr)
        require(self.noise >= 0, f"{s}.router_noise", "a number >= 0", self.noise)
        require(0 <= self.floor < 1, f"{s}.router_floor", "a number in [0, 1)", self.floor)
        require(self.temperature > 0, f"{s}.router_temperature", "a number > 0", self.temperature)
        require(self.init_std >= 0, f"{s}.router_init_std", "a number >= 0", self.init_std)
        require(isinstance(self.steps, int) and self.steps >= 0, f"{s}.router_steps", "an integer >= 0",
                self.steps)
        require(self.select in SELECTIONS, f"{s}.router_select", '"gradient", "loss" or "em"', self.select)
        require(0 <= self.explore <= 1, f"{s}.router_explore", "a number in [0, 1]", self.explore)
        require(0 <= self.revive < 1, f"{s}.router_revive", "a number in [0, 1)", self.revive)
        require(self.revive == 0 or self.select in ("loss", "em"), f"{s}.router_revive",
                '0 unless router_select is "loss" or "em" (revival splits components chosen by loss)', self.revive)
        require(isinstance(self.revive_window, int) and self.revive_window >= 1, f"{s}.router_revive_window",
                "an integer >= 1", self.revive_window)

    @property
    def closed_form(self) -> bool:
        """True when pi is softmax(logits / temperature) exactly (no noise, no floor): kernel-friendly."""
        return not (self.noise or self.floor)
MIXTURE_WEIGHT = "mixture_weight"
# Logit of the clusters a client does not belong to under the optimal-router oracle: exp(-1e4)
# underflows to exactly 0 in float32/float64, so pi is an exact one-hot (the paper uses -100).
ORACLE_OFF = -1e4


def router_field(**defaults: Any) -> Any:
    """An options field holding a ``RouterConfig``, read from the flat ``router_*`` keys of its TOML table."""
    return field(default_factory=lambda: RouterConfig(**defaults), metadata={"flatten": "router_"})


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


def router_report(key: str = ROUTER, initial: Mapping[str, Tensor] | None = None, temperature: float = 1.0):
    """A report hook: ARI of each client's argmax component against its true cluster, the choices, the mean
    entropy of pi (nats) and, given the run's ``initial`` logits (``{key: [N, C]}``), the mean L2 drift of
    each client's logits from them."""

    def report(server: Mapping, client_states: Mapping[str, Tensor], clusters: Tensor) -> dict:
        if key not in client_states:
            return {}
        logits = client_states[key].detach().cpu().to(torch.float64)
        choice = logits.argmax(dim=-1)
        pi = torch.softmax(logits / temperature, dim=-1)
        out = {"router_ari": adjusted_rand_index(choice, clusters.cpu()), "router_clusters": choice.tolist(),
               "router_entropy": float(-(pi * torch.log(pi.clamp_min(1e-30))).sum(-1).mean())}
        if initial is not None and key in initial and initial[key].shape == logits.shape:
            out["router_drift"] = float((logits - initial[key].cpu().to(torch.float64)).norm(dim=-1).mean())
        if "revival" in server:  # component revival: each component's share of the examples, splits so far
            out["component_share"] = [round(float(v), 4) for v in server["revival"]["share"]]
            out["revival_splits"] = int(server["revival"]["splits"])
        return out

    return report
