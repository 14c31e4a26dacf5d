"""Ensemble (FLoRAL's baseline): C full models mixed per client by a private router, sum_c pi_c f_c(x).

Model c is aggregated with the same weights as FLoRAL's adaptor c, p(k|c) proportional to
n_k * pi_kc. The C models are initialised independently (identical copies with a uniform router
would receive identical updates and never specialise without router noise). Defaults follow the
official code: router noise 1.0 (U[0, 1) added to the logits in training) and members with pi_c < 1e-3
left out of the sum (``skip_below``); ``router_noise = 0`` / ``skip_below = 0`` switch them off.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..adapters import SKIP_BELOW, EnsembleModel, Router, independent_copies, member_of
from ..checks import require
from .contract import Algorithm, LossSpec, Objective
from .floral import RoutedOptions
from .local_update import local_sgd
from .registry import BuildContext, register
from .routed import routed_functions
from .routing import MIXTURE_WEIGHT, ROUTER, RouterConfig, component_weights, routed_mean, router_field, router_report
from .server_opt import ServerOptimizer, server_sgd


def ensemble(model: nn.Module, objective: Objective, num_models: int, *, lr: float,
             router: RouterConfig | None = None, optimal_router: bool = False,
             server_opt: ServerOptimizer | None = None, weight_decay: float = 0.0, skip_below: float = SKIP_BELOW,
             name: str = "ensemble") -> Algorithm:
    """The Ensemble baseline from one model (copied C times, independently initialised).

    ``router`` defaults to the official one (noise 1.0); ``skip_below`` leaves out members with small pi_c.
    """
    rc = router or RouterConfig(noise=1.0)
    net = EnsembleModel(independent_copies(model, num_models), Router(num_models), skip_below=skip_below)
    server_opt = server_opt or server_sgd(1.0)
    init_params = {k: v.detach().clone() for k, v in net.named_parameters() if k != ROUTER}
    routed = routed_functions(net, objective, rc, num_models, optimal_router, init_params, server_opt)

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

    total = sum(v.numel() for v in init_params.values())
    update = local_sgd(lr, lr_of=lambda k: routed.router_rate if k == ROUTER else lr, weight_decay_rate=weight_decay,
                       decay_exempt=("router.",))
    # The oracle's pi is an exact one-hot: skipping the members of pi_c = 0 changes nothing there.
    declared = LossSpec(router=rc, skip_below=0.0 if optimal_router else skip_below)
    return Algorithm(name=name, model=net, objective=objective, **routed.functions(), aggregate=aggregate,
                     local_update=update, private_keys=("router.",),
                     loss_spec=declared,
                     param_counts={"models": total, "router": num_models, "uploaded": total + num_models},
                     report=router_report(initial=routed.initial, temperature=rc.temperature))


@dataclass(frozen=True)
class EnsembleOptions(RoutedOptions):
    """The Ensemble: the official router (noise 1.0) and member skip below pi_c = 1e-3 by default."""

    router: RouterConfig = router_field(noise=1.0)  # official: noise_std 1.0
    #: leave out members whose pi_c is below this (official: 1e-3; 0 mixes every member)
    skip_below: float = SKIP_BELOW

    def check(self, s: str) -> None:
        super().check(s)
        require(0 <= self.skip_below < 1, f"{s}.skip_below", "a number in [0, 1)", self.skip_below)
        require(self.router.revive == 0, f"{s}.router_revive", "0 (component revival is FLoRAL's only)",
                self.router.revive)


@dataclass(frozen=True)
class EnsembleOptimalOptions(EnsembleOptions):
    # The oracle's pi is an exact one-hot: noise on the -1e4 logits and the skip change nothing, and a
    # noise-free, skip-free declaration lets the MLP kernels run it too.
    router: RouterConfig = router_field()
    optimal_router: bool = True


def _ensemble_builder(name: str):
    def build(model: nn.Module, ctx: BuildContext, options: EnsembleOptions) -> Algorithm:
        return ensemble(model, ctx.objective, options.components(ctx), lr=ctx.train.lr, router=options.router,
                        optimal_router=options.optimal_router, server_opt=ctx.server_optimizer(),
                        weight_decay=ctx.train.weight_decay, skip_below=options.skip_below, name=name)

    return build


register("ensemble", EnsembleOptions,
         "Ensemble: C full models mixed by a private router")(_ensemble_builder("ensemble"))
register("ensemble_opt", EnsembleOptimalOptions,
         "Ensemble with the optimal (true-cluster) router")(_ensemble_builder("ensemble_opt"))
