"""A mixture of whole models: C members and a router, output sum_c pi_c f_c(x) (FLoRAL's Ensemble baseline)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .mixture import Router

MEMBERS = "members."
SKIP_BELOW = 1e-3  # the official Ensemble leaves out members whose pi_c is below this


def reinitialize(module: nn.Module) -> nn.Module:
    """Fresh default initialisation of every submodule that has ``reset_parameters`` (global torch RNG)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


def independent_copies(model: nn.Module, num: int) -> list[nn.Module]:
    """``model`` itself (copied) and ``num - 1`` freshly initialised copies."""
    first = copy.deepcopy(model)
    return [first] + [reinitialize(copy.deepcopy(model)) for _ in range(num - 1)]


class EnsembleModel(nn.Module):
    """C member models and a router; parameters ``members.<c>.<name>`` and ``router.logits``.

    ``skip_below`` > 0 leaves out (weight 0, no gradient) the members whose pi_c is below it, as the
    official Ensemble does with 1e-3; 0 mixes every member.
    """

    def __init__(self, members: list[nn.Module], router: Router, skip_below: float = 0.0) -> None:
        super().__init__()
        if len(members) != router.num_adaptors:
            raise ValueError(f"{len(members)} members but the router mixes {router.num_adaptors}")
        self.members = nn.ModuleList(members)
        self.router = router
        self.skip_below = skip_below

    def forward(self, x: Tensor, pi: Tensor | None = None) -> Tensor:
        """The pi-weighted sum of the members' outputs (logits for classification)."""
        if pi is None:
            pi = torch.softmax(self.router.logits, dim=-1)
        if self.skip_below:
            pi = torch.where(pi < self.skip_below, torch.zeros_like(pi), pi)
        return sum(pi[c] * m(x) for c, m in enumerate(self.members))


def member_of(name: str) -> int:
    """Index c of the member a parameter ``members.<c>.*`` belongs to."""
    return int(name[len(MEMBERS):].split(".", 1)[0])
