"""FLoRAL (Almansoori et al., arXiv 2410.03497): a federated base plus C federated low-rank adaptors,
mixed per client by a private router.

Server state: the MixtureModel's parameters without ``router.logits`` (base + adaptors). Client
state: ``router.logits`` [N, C], private. Each round a client trains base, adaptors and router with
plain SGD (one learning rate each, LoRA gradients preconditioned by default), then uploads base,
adaptors and its mixture weights pi_k = softmax(logits) (noise-free, floor-free). The server
averages the base with weights n_k and adaptor c with p(k|c) proportional to n_k * pi_kc; like the
official code it averages A and B separately (not B A): the method's known aggregation mismatch.

The default is the clean form (no router floor, no router noise, zero adaptor-bias init, undamped
server step); ``paper_*`` switches and ``floral_paper`` reproduce the official code (docs/floral.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..adapters import MixtureModel, inject, param_role
from ..checks import require, require_rank
from ..models.hf import HF_MODELS
from .contract import Algorithm, LossSpec, Objective, weighted_mean
from .local_update import local_sgd
from .registry import BuildContext, register
from .revival import revive_step
from .routed import routed_functions
from .routing import MIXTURE_WEIGHT, ROUTER, RouterConfig, component_weights, routed_mean, router_field, router_report
from .server_opt import ServerOptimizer, server_sgd


@dataclass(frozen=True)
class LearningRates:
    """Client learning rates of the three parameter roles (plain SGD, fresh each round)."""

    base: float
    adaptor: float
    router: float

    def of(self, name: str) -> float:
        role = param_role(name)
        return self.router if role == "router" else self.adaptor if role == "adaptor" else self.base


def wrap(model: nn.Module, num_adaptors: int, rank: float | int = 0.01, *, adaptor_bias: bool = True,
         init_bias: str = "zeros", **inject_options) -> MixtureModel:
    """One call from a user's model to a FLoRAL MixtureModel (C adaptors on every Linear/Conv2d).

    The user's model is copied, never changed; ``inject_options`` go to ``adapters.inject``.
    """
    return inject(model, num_adaptors=num_adaptors, rank=rank, adaptor_bias=adaptor_bias, init_bias=init_bias,
                  **inject_options)


def floral(model: MixtureModel, objective: Objective, *, lr: float, lora_lr: float | None = None,
           router: RouterConfig | None = None, precondition: bool = True, precondition_eps: float = 1e-5,
           optimal_router: bool = False, server_opt: ServerOptimizer | None = None,
           weight_decay: float = 0.0, name: str = "floral", train_base: bool = True,
           max_step_norm: float | None = None) -> Algorithm:
    """FLoRAL over a MixtureModel (e.g. from ``wrap``); its parameters are the initial state.

    ``optimal_router=True`` is the oracle: each client's pi is fixed to its true cluster's one-hot.
    ``router`` holds every router setting (learning rate, noise, floor, temperature, ...).
    ``train_base=False``: the base stays the template's (frozen, pretrained, never sent); only adaptors
    are federated and routers kept private. ``max_step_norm`` caps the global L2 norm of each local step's
    (preconditioned) gradient, per client (ours; none: the paper's unclipped step).
    """
    if not isinstance(model, MixtureModel):
        raise TypeError(f"floral needs a MixtureModel (see bouquet.wrap), got {type(model).__name__}")
    rc = router or RouterConfig()
    num = model.num_adaptors
    server_opt = server_opt or server_sgd(1.0)
    init_params = {k: v.detach().clone() for k, v in model.named_parameters()
                   if k != ROUTER and (train_base or param_role(k) != "base")}
    routed = routed_functions(model, objective, rc, num, optimal_router, init_params, server_opt)
    rates = LearningRates(lr, lr if lora_lr is None else lora_lr, routed.router_rate)

    def aggregate(server, uploads, num_examples):
        weights = component_weights(uploads[MIXTURE_WEIGHT], num_examples)
        old = server["params"]
        avg = {}
        for k, v in uploads.items():
            if k == MIXTURE_WEIGHT:
                continue
            avg[k] = routed_mean(v, weights, old[k]) if param_role(k) == "adaptor" else weighted_mean(v, num_examples)
        params, opt = server_opt.update(old, avg, server["opt"])
        if not rc.revive:
            return {"params": params, "opt": opt}
        adaptor_keys = [k for k in avg if param_role(k) == "adaptor"]
        params, revival = revive_step(server["revival"], params, uploads, uploads[MIXTURE_WEIGHT], num_examples,
                                      adaptor_keys, rc.revive, rc.revive_window)
        return {"params": params, "opt": opt, "revival": revival}

    adaptors = sum(v.numel() for k, v in init_params.items() if param_role(k) == "adaptor")
    base = sum(v.numel() for k, v in init_params.items() if param_role(k) == "base")
    update = local_sgd(lr, lr_of=rates.of, weight_decay_rate=weight_decay,
                       precondition_eps=precondition_eps if precondition else None, decay_exempt=("router.",),
                       max_norm=max_step_norm)
    return Algorithm(name=name, model=model, objective=objective, **routed.functions(), aggregate=aggregate,
                     local_update=update, private_keys=("router.",),
                     loss_spec=LossSpec(router=rc),
                     param_counts={"adaptors": adaptors, "router": num, "uploaded": base + adaptors + num},
                     report=router_report(initial=routed.initial, temperature=rc.temperature))


def damped_server_lr(server_lr: float, lora_lr: float):
    """The official code's server step: adaptors move by lora_lr of their averaged update, the rest by server_lr."""

    def lr_of(name: str) -> float:
        return lora_lr if param_role(name) == "adaptor" else server_lr

    return lr_of


# ---------------------------------------------------------------------------------------------
# Registration: FLoRAL, its budgets, the optimal-router oracles and the official code's preset.


@dataclass(frozen=True)
class RoutedOptions:
    """A routed mixture: number of components C (None = the dataset's clusters), oracle, router settings."""

    #: number of mixture components C (none: the dataset's number of clusters)
    num_components: int | None = None
    #: oracle: each client's router fixed to its true cluster's one-hot
    optimal_router: bool = False
    router: RouterConfig = router_field()

    def check(self, s: str) -> None:
        require(self.num_components is None or self.num_components >= 1, f"{s}.num_components",
                "none or an integer >= 1", self.num_components)
        self.router.check(s)
        require(self.router.select == "gradient" or self.router.init_std > 0 or self.optimal_router,
                f"{s}.router_init_std", '> 0 with router_select = "loss" (it breaks ties between identical '
                "components)", self.router.init_std)

    def components(self, ctx: BuildContext) -> int:
        return self.num_components or ctx.num_clusters


@dataclass(frozen=True)
class FloralOptions(RoutedOptions):
    """FLoRAL: adaptor budget, learning rates, preconditioning and the paper-compatibility switches."""

    rank: float = 0.01  # budget rho < 1 (adaptor ~ rho of each layer's weights) or an integer rank
    router: RouterConfig = router_field(init_std=1.0)  # ours: random initial logits
    adaptor_bias: bool = True  # a full-width bias per adaptor (the paper's "adaptive bias")
    lora_lr: float | None = None  # adaptor learning rate; None = train.lr
    precondition: bool = True  # ScaledGD / Riemannian LoRA preconditioning, on in the official code
    #: damping added before inverting the LoRA factors' Gram matrices in preconditioning
    precondition_eps: float = 1e-5
    #: ours: cap on the global L2 norm of each local step's (preconditioned) gradient, per client (none: no cap)
    max_step_norm: float | None = None
    #: how a conv kernel is factored into ConvLoRA: 'balanced_2d', 'balanced', 'in' or 'out'
    conv_variant: str = "balanced_2d"
    #: module name patterns that get adaptors (none: every Linear and Conv2d, classifier included; for
    #: [model] name = "hf" the architecture's LoRA targets, e.g. q_proj and v_proj)
    target_modules: list[str] | None = None
    #: federate the base too (the paper); false keeps a pretrained base frozen and never sent
    train_base: bool = True
    paper_bias_init: bool = False  # official: adaptor biases start at U(+-1/sqrt(r)), not zero
    paper_server_damping: bool = False  # official: the server moves adaptors by lora_lr of their update
    paper_conv_rank_bug: bool = False  # official: conv ranks computed with 2 kernel elements, not kh*kw

    def check(self, s: str) -> None:
        super().check(s)
        require_rank(self.rank, f"{s}.rank")
        require(self.lora_lr is None or self.lora_lr > 0, f"{s}.lora_lr", "none or a number > 0", self.lora_lr)
        require(self.precondition_eps > 0, f"{s}.precondition_eps", "a number > 0", self.precondition_eps)
        require(self.max_step_norm is None or self.max_step_norm > 0, f"{s}.max_step_norm", "none or a number > 0",
                self.max_step_norm)


@dataclass(frozen=True)
class Floral10Options(FloralOptions):
    rank: float = 0.1


@dataclass(frozen=True)
class FloralOptimalOptions(FloralOptions):
    optimal_router: bool = True


@dataclass(frozen=True)
class Floral10OptimalOptions(FloralOptions):
    rank: float = 0.1
    optimal_router: bool = True


@dataclass(frozen=True)
class FloralCleanOptions(FloralOptions):
    """The paper's method without the official code's extras: zero initial logits, temperature 1."""

    router: RouterConfig = router_field()


@dataclass(frozen=True)
class FloralEMOptions(FloralOptions):
    """Ours: FLoRAL 1% whose routers take an EM step per visit (explore 0.05, chosen on selection seeds)."""

    router: RouterConfig = router_field(init_std=1.0, select="em", explore=0.05)


@dataclass(frozen=True)
class FloralEMReviveOptions(FloralOptions):
    """Ours: ``floral_em`` whose server revives a component left without clients (revive 0.25, fixed beforehand;
    switched on by mnist5k label shift's selection seeds 100-105, where it undid the one lock-in and, not firing on
    the others, left them as they were up to float rounding)."""

    router: RouterConfig = router_field(init_std=1.0, select="em", explore=0.05, revive=0.25)


@dataclass(frozen=True)
class FloralPaperOptions(FloralOptions):
    """The official code's behaviour: noise 1, floor 0.01, random adaptor bias, damped server, conv rank bug."""

    router: RouterConfig = router_field(noise=1.0, floor=0.01)
    paper_bias_init: bool = True
    paper_server_damping: bool = True
    paper_conv_rank_bug: bool = True


def as_rank(value: float) -> float | int:
    """A rank option: integers >= 1 are ranks, values below 1 budgets."""
    return int(value) if value >= 1 else value


def build_floral(model: nn.Module, ctx: BuildContext, options: FloralOptions, name: str = "floral") -> Algorithm:
    """FLoRAL (or a variant) from the experiment's model and the options of ``[algo.<name>]``."""
    targets = options.target_modules
    if targets is None and isinstance(model, HF_MODELS):
        targets = model.lora_targets
    mixture = wrap(model, options.components(ctx), as_rank(options.rank), adaptor_bias=options.adaptor_bias,
                   init_bias="uniform" if options.paper_bias_init else "zeros",
                   target_modules=targets, conv_variant=options.conv_variant,
                   paper_conv_rank_bug=options.paper_conv_rank_bug,
                   exclude=getattr(model, "lora_exclude", ()))  # layers the model never runs (cached)
    lora_lr = options.lora_lr if options.lora_lr is not None else ctx.train.lr
    lr_of = damped_server_lr(ctx.server.lr, lora_lr) if options.paper_server_damping else None
    return floral(mixture, ctx.objective, lr=ctx.train.lr, lora_lr=lora_lr, router=options.router,
                  precondition=options.precondition, precondition_eps=options.precondition_eps,
                  optimal_router=options.optimal_router, server_opt=ctx.server_optimizer(lr_of),
                  weight_decay=ctx.train.weight_decay, name=name, train_base=options.train_base,
                  max_step_norm=options.max_step_norm)


def _floral_builder(name: str):
    def build(model, ctx, options):
        return build_floral(model, ctx, options, name=name)

    return build


for _name, _opts, _summary in (
    ("floral", FloralOptions, "FLoRAL 1%: federated base + C routed low-rank adaptors, private routers"),
    ("floral_10", Floral10Options, "FLoRAL 10%: adaptor budget rho = 0.1"),
    ("floral_opt", FloralOptimalOptions, "FLoRAL 1% with the optimal (true-cluster) router"),
    ("floral_10_opt", Floral10OptimalOptions, "FLoRAL 10% with the optimal (true-cluster) router"),
    ("floral_clean", FloralCleanOptions, "FLoRAL 1% in the paper's clean form: zero router init, temperature 1"),
    ("floral_em", FloralEMOptions, "FLoRAL 1% with EM routers: pi_c proportional to pi_c exp(-n_k loss_c) (ours)"),
    ("floral_em_revive", FloralEMReviveOptions, "floral_em with component revival: a component left without "
     "clients takes half of the most used one (ours)"),
    ("floral_paper", FloralPaperOptions, "FLoRAL as the official code runs it (noise, floor, bias init, damping)"),
):
    register(_name, _opts, _summary)(_floral_builder(_name))
