"""FedAvg (McMahan et al.): one global model, clients run local SGD, the server averages by n_k.

``fedavg_ft`` is "FedAvg + local fine-tuning": before each evaluation the global model is fine-tuned on
each client's training rows (evaluation only).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..checks import require
from .contract import Algorithm, Finetune, LossSpec, Objective, fedavg_aggregate, model_params, task_loss
from .local_update import LocalUpdate, local_sgd
from .registry import BuildContext, NoOptions, register
from .server_opt import ServerOptimizer, server_sgd


def fedavg(model: nn.Module, objective: Objective, *, lr: float, weight_decay: float = 0.0,
           server_opt: ServerOptimizer | None = None, finetune: Finetune | None = None,
           local_update: LocalUpdate | None = None, name: str = "fedavg") -> Algorithm:
    """FedAvg over ``model`` (its current parameters are the initial global model).

    ``local_update`` replaces plain SGD as the clients' step (FedProx builds on this).
    """
    server_opt = server_opt or server_sgd(1.0)
    init_params = model_params(model)

    def init(gen, clusters):
        params = {k: v.clone() for k, v in init_params.items()}
        return {"params": params, "opt": server_opt.init(params)}, {}

    def broadcast(server):
        return dict(server["params"])

    def client_init(payload, client_state, batches):
        return dict(payload)

    def loss(trainable, payload, client_state, batch):
        return task_loss(alg.apply(trainable, batch["x"]), batch["y"], batch["w"], objective)

    def client_final(trainable, payload, client_state, num_examples, batches):
        return dict(trainable), {}

    def personalize(server, client_state):
        return server["params"]

    alg = Algorithm(name=name, model=model, objective=objective, init=init, broadcast=broadcast,
                    client_init=client_init, loss=loss, client_final=client_final,
                    aggregate=fedavg_aggregate(server_opt),
                    personalize=personalize,
                    local_update=local_update or local_sgd(lr, weight_decay_rate=weight_decay),
                    finetune=finetune, loss_spec=LossSpec())
    return alg


@dataclass(frozen=True)
class FinetuneOptions:
    """Local fine-tuning before evaluation: epochs over the client's training data, lr (default: train.lr)."""

    #: local fine-tuning epochs over the client's training rows before each evaluation
    epochs: int = 1
    #: fine-tuning learning rate (none: train.lr)
    lr: float | None = None

    def check(self, s: str) -> None:
        require(self.epochs >= 1, f"{s}.epochs", "an integer >= 1", self.epochs)
        require(self.lr is None or self.lr > 0, f"{s}.lr", "none or a number > 0", self.lr)

    def finetune(self, train_lr: float, trainable=None) -> Finetune:
        lr = self.lr if self.lr is not None else train_lr
        return Finetune(self.epochs, lr) if trainable is None else Finetune(self.epochs, lr, trainable)


@register("fedavg", NoOptions, "FedAvg: one global model")
def build_fedavg(model: nn.Module, ctx: BuildContext, options: NoOptions) -> Algorithm:
    return fedavg(model, ctx.objective, lr=ctx.train.lr, weight_decay=ctx.train.weight_decay,
                  server_opt=ctx.server_optimizer())


@register("fedavg_ft", FinetuneOptions, "FedAvg + local fine-tuning before evaluation")
def build_fedavg_ft(model: nn.Module, ctx: BuildContext, options: FinetuneOptions) -> Algorithm:
    return fedavg(model, ctx.objective, lr=ctx.train.lr, weight_decay=ctx.train.weight_decay,
                  server_opt=ctx.server_optimizer(), finetune=options.finetune(ctx.train.lr), name="fedavg_ft")
