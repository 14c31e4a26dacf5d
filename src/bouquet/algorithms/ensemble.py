"""Ensemble (FLoRAL's baseline): C full models mixed per client by a private router, sum_c pi_c f_c(x).

Model c is aggregated with the same weights as FLoRAL's adaptor c, p(k|c) proportional to
n_k * pi_kc. The C models are initialised independently (identical copies with a uniform router
would receive identical updates and never specialise without router noise).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from ..adapters import Router
from .base import Algorithm, LocalOptimizer
from .floral import RouterConfig, routed_functions
from .routing import MIXTURE_WEIGHT, ROUTER, component_weights, routed_mean
from .server_opt import ServerOptimizer, server_sgd

MEMBERS = "members."


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
    """C member models and a router; parameters ``members.<c>.<name>`` and ``router.logits``."""

    def __init__(self, members: list[nn.Module], router: Router) -> None:
        super().__init__()
        if len(members) != router.num_adaptors:
            raise ValueError(f"{len(members)} members but the router mixes {router.num_adaptors}")
        self.members = nn.ModuleList(members)
        self.router = router

    def forward(self, x: Tensor, pi: Tensor | None = None) -> Tensor:
        """The pi-weighted sum of the members' outputs (logits for classification)."""
        if pi is None:
            pi = self.router.weights(self.training)
        return sum(pi[c] * m(x) for c, m in enumerate(self.members))


def member_of(name: str) -> int:
    """Index c of the member a parameter ``members.<c>.*`` belongs to."""
    return int(name[len(MEMBERS):].split(".", 1)[0])


def ensemble(model: nn.Module, task: str, num_models: int, *, lr: float, router_lr: float = 0.1,
             router: RouterConfig | None = None, optimal_router: bool = False,
             server_opt: ServerOptimizer | None = None, weight_decay: float = 0.0,
             name: str = "ensemble") -> Algorithm:
    """Build the Ensemble baseline from one model (copied C times, independently initialised)."""
    rc = router or RouterConfig()
    net = EnsembleModel(independent_copies(model, num_models),
                        Router(num_models, noise_std=rc.noise_std, floor=rc.floor, temperature=rc.temperature))
    net.eval()
    server_opt = server_opt or server_sgd(1.0)
    init_params = {k: v.detach().clone() for k, v in net.named_parameters() if k != ROUTER}
    shared = routed_functions(net, task, rc, num_models, optimal_router, init_params, server_opt, router_lr)

    def aggregate(server, uploads, num_examples):
        weights = component_weights(uploads[MIXTURE_WEIGHT], num_examples)
        old = server["params"]
        avg = {}
        for k, v in uploads.items():
            if k == MIXTURE_WEIGHT:
                continue
            c = member_of(k)
            # One member's tensor as a one-component routed mean: weights column c.
            avg[k] = routed_mean(v.unsqueeze(1), weights[:, c:c + 1], old[k].unsqueeze(0))[0]
        params, opt = server_opt.update(old, avg, server["opt"])
        return {"params": params, "opt": opt}

    alg = Algorithm(name=name, model=net, task=task, **shared.functions, aggregate=aggregate,
                    optimizer=LocalOptimizer(lr=lr, lr_of=lambda k: shared.router_rate if k == ROUTER else lr,
                                             weight_decay=weight_decay),
                    private_keys=("router.",),
                    loss_spec=rc.loss_spec())
    total = sum(v.numel() for v in init_params.values())
    alg.hparams.update(param_counts={"models": total, "router": num_models, "uploaded": total + num_models},
                       report=shared.report, optimal_router=optimal_router)
    return alg
