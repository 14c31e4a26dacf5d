"""FedProx (Li et al., 2020): FedAvg whose clients add mu/2 ||w - w_global||^2 to their local objective.

The proximal term lives in the algorithm's local step (``local_update.proximal``: its gradient
mu (w - w_global), with w_global the model the client downloaded), so the engine runs it unchanged.
mu = 0 is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..checks import require
from .contract import Algorithm, Objective
from .fedavg import fedavg
from .local_update import local_sgd, proximal
from .registry import BuildContext, register
from .server_opt import ServerOptimizer


def fedprox(model: nn.Module, objective: Objective, *, lr: float, mu: float = 0.01, weight_decay: float = 0.0,
            server_opt: ServerOptimizer | None = None, name: str = "fedprox") -> Algorithm:
    """FedProx over ``model`` with proximal weight ``mu``."""
    update = local_sgd(lr, weight_decay_rate=weight_decay, extra=(proximal(mu),))
    return fedavg(model, objective, lr=lr, weight_decay=weight_decay, server_opt=server_opt, local_update=update,
                  name=name)


@dataclass(frozen=True)
class FedProxOptions:
    """FedProx's proximal weight mu (the paper's grid: 0.001, 0.01, 0.1, 1)."""

    #: proximal weight mu on ||w - w_global||^2 / 2
    mu: float = 0.01

    def check(self, s: str) -> None:
        require(self.mu >= 0, f"{s}.mu", "a number >= 0", self.mu)


@register("fedprox", FedProxOptions, "FedProx: FedAvg with a proximal term mu/2 ||w - w_global||^2 locally")
def build_fedprox(model: nn.Module, ctx: BuildContext, options: FedProxOptions) -> Algorithm:
    return fedprox(model, ctx.objective, lr=ctx.train.lr, mu=options.mu, weight_decay=ctx.train.weight_decay,
                   server_opt=ctx.server_optimizer())
