"""Registration of the plain baselines: FedAvg, Local and FedAvg + local fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import require
from .fedavg import fedavg
from .local import local
from .registry import register, server_optimizer_of


@dataclass(frozen=True)
class NoOptions:
    """This algorithm has no options of its own."""


@dataclass(frozen=True)
class FinetuneOptions:
    """Local fine-tuning before evaluation: epochs over the client's training data, lr (default: train.lr)."""

    epochs: int = 1
    lr: float | None = None

    def check(self, s: str) -> None:
        require(self.epochs >= 1, f"{s}.epochs", "an integer >= 1", self.epochs)
        require(self.lr is None or self.lr > 0, f"{s}.lr", "none or a number > 0", self.lr)


@register("fedavg", NoOptions, "FedAvg: one global model")
def build_fedavg(model, data, exp, options):
    return fedavg(model, data.task, lr=exp.train.lr, weight_decay=exp.train.weight_decay,
                  server_opt=server_optimizer_of(exp))


@register("local", NoOptions, "Local: each client trains alone, no communication")
def build_local(model, data, exp, options):
    return local(model, data.task, lr=exp.train.lr, weight_decay=exp.train.weight_decay)


@register("fedavg_ft", FinetuneOptions, "FedAvg + local fine-tuning before evaluation")
def build_fedavg_ft(model, data, exp, options):
    alg = fedavg(model, data.task, lr=exp.train.lr, weight_decay=exp.train.weight_decay,
                 server_opt=server_optimizer_of(exp), name="fedavg_ft")
    alg.hparams.update(finetune_epochs=options.epochs, finetune_lr=options.lr)
    return alg
