"""Registration of the federated LoRA methods and Potara (``[algo.<name>]`` options for each)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import require
from ..merging.estimators import ESTIMATORS
from .lora_fed import apfl, ditto, lora_model, partitioned_lora
from .potara import GRANULARITIES, LOCAL_INITS, potara
from .registry import register, server_optimizer_of


@dataclass(frozen=True)
class LoraOptions:
    """LoRA on the frozen (pretrained) base: rank, scaling alpha, target layers (empty: the model's default)."""

    rank: int = 8
    alpha: float = 1.0
    targets: list[str] | None = None

    def check(self, s: str) -> None:
        require(self.rank >= 1, f"{s}.rank", "an integer >= 1", self.rank)
        require(self.alpha > 0, f"{s}.alpha", "a number > 0", self.alpha)


@dataclass(frozen=True)
class LoraFinetuneOptions(LoraOptions):
    """FedIT + local fine-tuning of the LoRA before evaluation (epochs, lr; default lr: train.lr)."""

    epochs: int = 1
    lr: float | None = None

    def check(self, s: str) -> None:
        super().check(s)
        require(self.epochs >= 1, f"{s}.epochs", "an integer >= 1", self.epochs)
        require(self.lr is None or self.lr > 0, f"{s}.lr", "none or a number > 0", self.lr)


@dataclass(frozen=True)
class DittoOptions(LoraOptions):
    """Ditto's proximal weight mu on ||personal - global||^2."""

    mu: float = 0.1

    def check(self, s: str) -> None:
        super().check(s)
        require(self.mu >= 0, f"{s}.mu", "a number >= 0", self.mu)


@dataclass(frozen=True)
class ApflOptions(LoraOptions):
    """APFL's mixing alpha: initial value and its learning rate."""

    alpha_init: float = 0.5
    alpha_lr: float = 0.01

    def check(self, s: str) -> None:
        super().check(s)
        require(0 <= self.alpha_init <= 1, f"{s}.alpha_init", "a number in [0, 1]", self.alpha_init)
        require(self.alpha_lr >= 0, f"{s}.alpha_lr", "a number >= 0", self.alpha_lr)


@dataclass(frozen=True)
class PotaraOptions(LoraOptions):
    """Potara: federated rounds R_f, trace estimator, lambda granularity, bias term, local LoRA init.

    ``weighted``: curvature-weighted traces tr(F Sigma) for laplace_fisher (else plain tr Sigma).
    """

    federated_rounds: int = 5
    estimator: str = "sgd_fisher"
    granularity: str = "client"
    bias_term: bool = True
    local_init: str = "W0"
    damping: float = 1e-4
    weighted: bool = True
    fisher_steps: int = 2
    window: int = 5

    def check(self, s: str) -> None:
        super().check(s)
        require(self.federated_rounds >= 1, f"{s}.federated_rounds", "an integer >= 1", self.federated_rounds)
        require(self.estimator in ESTIMATORS, f"{s}.estimator", f"one of {list(ESTIMATORS)}", self.estimator)
        require(self.granularity in GRANULARITIES, f"{s}.granularity", f"one of {list(GRANULARITIES)}",
                self.granularity)
        require(self.local_init in LOCAL_INITS, f"{s}.local_init", f"one of {list(LOCAL_INITS)}", self.local_init)
        require(self.damping > 0, f"{s}.damping", "a number > 0", self.damping)
        require(self.fisher_steps >= 1, f"{s}.fisher_steps", "an integer >= 1", self.fisher_steps)
        require(self.window >= 1, f"{s}.window", "an integer >= 1", self.window)


def _lora(model, data, exp, options):
    """The LoRA template over the (pretrained, when the experiment has a [pretrain] table) base."""
    from ..pretrain import load_pretrained

    model = load_pretrained(model, exp, data)
    return lora_model(model, options.rank, options.targets, options.alpha)


def _common(exp) -> dict:
    return {"lr": exp.train.lr, "weight_decay": exp.train.weight_decay, "server_opt": server_optimizer_of(exp)}


def _keys(init, leaf: str) -> list[str]:
    return [k for k in init if k.endswith(leaf)]


@register("fedit", LoraOptions, "FedIT: FedAvg of LoRA A and B on a frozen base")
def build_fedit(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    return partitioned_lora(t, init, data.task, name="fedit", shared=init, **_common(exp))


@register("fedit_ft", LoraFinetuneOptions, "FedIT, then local fine-tuning of the LoRA before evaluation")
def build_fedit_ft(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    alg = partitioned_lora(t, init, data.task, name="fedit_ft", shared=init, finetune=True, **_common(exp))
    alg.hparams.update(finetune_epochs=options.epochs, finetune_lr=options.lr)
    return alg


@register("ffa_lora", LoraOptions, "FFA-LoRA: A frozen at its random init, only B trained and sent")
def build_ffa_lora(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    return partitioned_lora(t, init, data.task, name="ffa_lora", shared=_keys(init, ".lora_B"),
                            frozen=_keys(init, ".lora_A"), **_common(exp))


@register("fedsa_lora", LoraOptions, "FedSA-LoRA: A shared (FedAvg), B kept local")
def build_fedsa_lora(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    return partitioned_lora(t, init, data.task, name="fedsa_lora", shared=_keys(init, ".lora_A"),
                            local=_keys(init, ".lora_B"), **_common(exp))


@register("local_lora", LoraOptions, "Local LoRA: each client trains its own LoRA, no communication")
def build_local_lora(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    return partitioned_lora(t, init, data.task, name="local_lora", shared=(), local=init, **_common(exp))


@register("ditto", DittoOptions, "Ditto: global LoRA by FedAvg plus a proximal personal LoRA")
def build_ditto(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    return ditto(t, init, data.task, mu=options.mu, **_common(exp))


@register("apfl", ApflOptions, "APFL: global and personal LoRA, outputs mixed by a learned alpha")
def build_apfl(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    return apfl(t, init, data.task, alpha_init=options.alpha_init, alpha_lr=options.alpha_lr, **_common(exp))


@register("potara", PotaraOptions, "Potara: federated and local LoRA merged in delta-W space, closed-form lambda")
def build_potara(model, data, exp, options):
    t, init = _lora(model, data, exp, options)
    return potara(t, init, data.task, federated_rounds=options.federated_rounds,
                  total_examples=int(data.train_sizes().sum()), estimator=options.estimator,
                  granularity=options.granularity, bias_term=options.bias_term, local_init=options.local_init,
                  damping=options.damping, weighted=options.weighted, fisher_steps=options.fisher_steps,
                  window=options.window, **_common(exp))
