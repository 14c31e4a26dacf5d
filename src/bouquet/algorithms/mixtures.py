"""Registration of FLoRAL, its paper preset, its baselines (Local Adaptor, Ensemble, IFCA) and the oracles.

Every option lives in ``[algo.<name>]``; ``docs/floral.md`` explains each switch. Names ending in
``_opt`` are the optimal-router oracles (pi fixed to the true cluster, router not trained).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import require
from .ensemble import ensemble
from .floral import RouterConfig, damped_server_lr, floral, wrap
from .ifca import ifca
from .local_adaptor import local_adaptor
from .registry import register, server_optimizer_of


@dataclass(frozen=True)
class RouterOptions:
    """Router of a mixture: learning rate, training noise, floor, temperature, entropy weight, oracle."""

    num_components: int | None = None  # C; None = the dataset's number of clusters
    router_lr: float = 0.1
    router_noise: float = 0.0  # official: 1.0 (noise_std * U[0, 1) added to the logits when training)
    router_floor: float = 0.0  # official: 0.01 (pi clamped from below, not renormalised)
    router_temperature: float = 1.0
    router_entropy: float = 0.0  # loss - router_entropy * H(pi); > 0 favours uniform pi
    optimal_router: bool = False
    router_init_std: float = 0.0  # ours: random initial router logits N(0, std^2); paper: 0 (uniform pi)
    router_steps: int = 0  # ours: router-only SGD steps on the downloaded model before each local round
    router_select: str = "gradient"  # ours, "loss": one-hot on the component of lowest training loss each visit

    def check(self, s: str) -> None:
        require(isinstance(self.router_steps, int) and self.router_steps >= 0, f"{s}.router_steps",
                "an integer >= 0", self.router_steps)
        require(self.router_select in ("gradient", "loss"), f"{s}.router_select", '"gradient" or "loss"',
                self.router_select)
        require(self.router_select == "gradient" or self.router_init_std > 0 or self.optimal_router,
                f"{s}.router_init_std", '> 0 with router_select = "loss" (it breaks ties between identical '
                "components)", self.router_init_std)
        require(self.router_init_std >= 0, f"{s}.router_init_std", "a number >= 0", self.router_init_std)
        require(self.num_components is None or self.num_components >= 1, f"{s}.num_components",
                "none or an integer >= 1", self.num_components)
        require(self.router_lr >= 0, f"{s}.router_lr", "a number >= 0", self.router_lr)
        require(self.router_noise >= 0, f"{s}.router_noise", "a number >= 0", self.router_noise)
        require(0 <= self.router_floor < 1, f"{s}.router_floor", "a number in [0, 1)", self.router_floor)
        require(self.router_temperature > 0, f"{s}.router_temperature", "a number > 0", self.router_temperature)

    def router(self) -> RouterConfig:
        return RouterConfig(self.router_noise, self.router_floor, self.router_temperature, self.router_entropy,
                            self.router_init_std, self.router_steps, self.router_select)


@dataclass(frozen=True)
class FloralOptions(RouterOptions):
    """FLoRAL: adaptor budget, learning rates, preconditioning and the paper-compatibility switches."""

    rank: float = 0.01  # budget rho < 1 (adaptor ~ rho of each layer's weights) or an integer rank
    router_init_std: float = 1.0  # ours: random initial logits; with zeros the adaptors start identical
    adaptor_bias: bool = True  # a full-width bias per adaptor (the paper's "adaptive bias")
    lora_lr: float | None = None  # adaptor learning rate; None = train.lr
    precondition: bool = True  # ScaledGD / Riemannian LoRA preconditioning, on in the official code
    precondition_eps: float = 1e-5
    conv_variant: str = "balanced_2d"
    target_modules: list[str] | None = None  # None = every Linear and Conv2d, classifier included
    paper_bias_init: bool = False  # official: adaptor biases start at U(+-1/sqrt(r)), not zero
    paper_server_damping: bool = False  # official: the server moves adaptors by lora_lr of their update
    paper_conv_rank_bug: bool = False  # official: conv ranks computed with 2 kernel elements, not kh*kw

    def check(self, s: str) -> None:
        super().check(s)
        require(self.rank > 0 and (self.rank < 1 or float(self.rank).is_integer()), f"{s}.rank",
                "a budget in (0, 1) or an integer rank >= 1", self.rank)
        require(self.lora_lr is None or self.lora_lr > 0, f"{s}.lora_lr", "none or a number > 0", self.lora_lr)
        require(self.precondition_eps > 0, f"{s}.precondition_eps", "a number > 0", self.precondition_eps)


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
class FloralPaperOptions(FloralOptions):
    """The official code's behaviour: noise 1, floor 0.01, random adaptor bias, damped server, conv rank bug."""

    router_noise: float = 1.0
    router_floor: float = 0.01
    router_init_std: float = 0.0
    paper_bias_init: bool = True
    paper_server_damping: bool = True
    paper_conv_rank_bug: bool = True


@dataclass(frozen=True)
class LocalAdaptorOptions:
    """Local Adaptor: one private adaptor per client on a federated base."""

    rank: float = 0.01
    adaptor_bias: bool = True
    lora_lr: float | None = None
    precondition: bool = True
    conv_variant: str = "balanced_2d"
    paper_bias_init: bool = False
    paper_conv_rank_bug: bool = False

    def check(self, s: str) -> None:
        require(self.rank > 0 and (self.rank < 1 or float(self.rank).is_integer()), f"{s}.rank",
                "a budget in (0, 1) or an integer rank >= 1", self.rank)
        require(self.lora_lr is None or self.lora_lr > 0, f"{s}.lora_lr", "none or a number > 0", self.lora_lr)


@dataclass(frozen=True)
class EnsembleOptimalOptions(RouterOptions):
    optimal_router: bool = True


@dataclass(frozen=True)
class IfcaOptions:
    """IFCA: the number of cluster models (None = the dataset's number of clusters)."""

    num_components: int | None = None

    def check(self, s: str) -> None:
        require(self.num_components is None or self.num_components >= 1, f"{s}.num_components",
                "none or an integer >= 1", self.num_components)


def _rank(value: float) -> float | int:
    return int(value) if value >= 1 else value


def _components(options, data) -> int:
    return options.num_components or data.num_clusters


def build_floral(model, data, exp, options: FloralOptions, name: str = "floral"):
    """FLoRAL (or a variant) from the experiment's model and the options of ``[algo.<name>]``."""
    num = _components(options, data)
    mixture = wrap(model, num, _rank(options.rank), adaptor_bias=options.adaptor_bias,
                   init_bias="uniform" if options.paper_bias_init else "zeros", router=options.router(),
                   target_modules=options.target_modules, conv_variant=options.conv_variant,
                   paper_conv_rank_bug=options.paper_conv_rank_bug)
    lora_lr = options.lora_lr if options.lora_lr is not None else exp.train.lr
    lr_of = damped_server_lr(exp.server.lr, lora_lr) if options.paper_server_damping else None
    return floral(mixture, data.task, lr=exp.train.lr, lora_lr=lora_lr, router_lr=options.router_lr,
                  router=options.router(), precondition=options.precondition,
                  precondition_eps=options.precondition_eps, optimal_router=options.optimal_router,
                  server_opt=server_optimizer_of(exp, lr_of=lr_of), weight_decay=exp.train.weight_decay, name=name)


def _floral_builder(name: str):
    def build(model, data, exp, options):
        return build_floral(model, data, exp, options, name=name)

    return build


for _name, _opts, _summary in (
    ("floral", FloralOptions, "FLoRAL 1%: federated base + C routed low-rank adaptors, private routers"),
    ("floral_10", Floral10Options, "FLoRAL 10%: adaptor budget rho = 0.1"),
    ("floral_opt", FloralOptimalOptions, "FLoRAL 1% with the optimal (true-cluster) router"),
    ("floral_10_opt", Floral10OptimalOptions, "FLoRAL 10% with the optimal (true-cluster) router"),
    ("floral_paper", FloralPaperOptions, "FLoRAL as the official code runs it (noise, floor, bias init, damping)"),
):
    register(_name, _opts, _summary)(_floral_builder(_name))


@register("local_adaptor", LocalAdaptorOptions, "Local Adaptor: federated base + one private adaptor per client")
def build_local_adaptor(model, data, exp, options: LocalAdaptorOptions):
    mixture = wrap(model, 1, _rank(options.rank), adaptor_bias=options.adaptor_bias,
                   init_bias="uniform" if options.paper_bias_init else "zeros", conv_variant=options.conv_variant,
                   paper_conv_rank_bug=options.paper_conv_rank_bug)
    return local_adaptor(mixture, data.task, lr=exp.train.lr, lora_lr=options.lora_lr,
                         precondition=options.precondition, server_opt=server_optimizer_of(exp),
                         weight_decay=exp.train.weight_decay)


def _ensemble_builder(name: str):
    def build(model, data, exp, options: RouterOptions):
        return ensemble(model, data.task, _components(options, data), lr=exp.train.lr, router_lr=options.router_lr,
                        router=options.router(), optimal_router=options.optimal_router,
                        server_opt=server_optimizer_of(exp), weight_decay=exp.train.weight_decay, name=name)

    return build


register("ensemble", RouterOptions, "Ensemble: C full models mixed by a private router")(_ensemble_builder("ensemble"))
register("ensemble_opt", EnsembleOptimalOptions,
         "Ensemble with the optimal (true-cluster) router")(_ensemble_builder("ensemble_opt"))


@register("ifca", IfcaOptions, "IFCA: C cluster models, each client uses the one of lowest training loss")
def build_ifca(model, data, exp, options: IfcaOptions):
    return ifca(model, data.task, _components(options, data), lr=exp.train.lr, server_opt=server_optimizer_of(exp),
                weight_decay=exp.train.weight_decay)
