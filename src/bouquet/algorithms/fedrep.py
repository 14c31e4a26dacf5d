"""FedRep (Collins et al., 2021): a federated representation (body) and a private head, trained in turn.

Each round a client first trains its head with the body fixed, then the body with its new head fixed,
and uploads the body. Here the first ``head_fraction`` of the round's local steps train the head and the
rest the body (``local_update.alternate``): with ``run.local_epochs = E_h + E_b`` and
``head_fraction = E_h / (E_h + E_b)`` that is the paper's E_h head epochs then E_b body epochs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from ..checks import require
from .contract import Algorithm, Objective
from .fedper import HeadOptions, head_names, personal_head
from .local_update import alternate, local_sgd
from .registry import BuildContext, register
from .server_opt import ServerOptimizer


def fedrep(model: nn.Module, objective: Objective, *, lr: float, head: Iterable[str] | None = None,
           head_fraction: float = 0.5, weight_decay: float = 0.0,
           server_opt: ServerOptimizer | None = None) -> Algorithm:
    """FedRep: head steps first (body fixed), then body steps (head fixed), every round."""
    names = head_names(model, head)
    update = local_sgd(lr, weight_decay_rate=weight_decay, extra=(alternate(lambda k: k in names, head_fraction),))
    return personal_head(model, objective, names, local_update=update, server_opt=server_opt, name="fedrep")


@dataclass(frozen=True)
class FedRepOptions(HeadOptions):
    """FedRep: the head layers and the fraction of each round's local steps that train the head."""

    #: fraction of each round's local steps that train the head (the rest train the body)
    head_fraction: float = 0.5

    def check(self, s: str) -> None:
        require(0 < self.head_fraction < 1, f"{s}.head_fraction", "a number in (0, 1)", self.head_fraction)


@register("fedrep", FedRepOptions, "FedRep: federated body, private head; head steps then body steps each round")
def build_fedrep(model: nn.Module, ctx: BuildContext, options: FedRepOptions) -> Algorithm:
    return fedrep(model, ctx.objective, lr=ctx.train.lr, head=options.head, head_fraction=options.head_fraction,
                  weight_decay=ctx.train.weight_decay, server_opt=ctx.server_optimizer())
