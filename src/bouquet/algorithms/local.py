"""Local training: every client trains its own model alone; nothing is communicated."""

from __future__ import annotations

from torch import nn

from .contract import (
    Algorithm,
    LossSpec,
    Objective,
    add_prefix,
    model_params,
    prefixed,
    stack_for_clients,
    task_loss,
)
from .local_update import local_sgd
from .registry import BuildContext, NoOptions, register

PRIVATE = "model."


def local(model: nn.Module, objective: Objective, *, lr: float, weight_decay: float = 0.0) -> Algorithm:
    """The Local baseline: client state holds a full private model per client, same init for all."""
    init_params = model_params(model)

    def init(gen, clusters):
        return {}, add_prefix(stack_for_clients(init_params, len(clusters)), PRIVATE)

    def broadcast(server):
        return {}

    def client_init(payload, client_state, batches):
        return prefixed(client_state, PRIVATE)

    def loss(trainable, payload, client_state, batch):
        return task_loss(alg.apply(trainable, batch["x"]), batch["y"], batch["w"], objective)

    def client_final(trainable, payload, client_state, num_examples, batches):
        return {}, add_prefix(trainable, PRIVATE)

    def aggregate(server, uploads, num_examples):
        return server

    def personalize(server, client_state):
        return prefixed(client_state, PRIVATE)

    alg = Algorithm(name="local", model=model, objective=objective, init=init, broadcast=broadcast,
                    client_init=client_init, loss=loss, client_final=client_final, aggregate=aggregate,
                    personalize=personalize, local_update=local_sgd(lr, weight_decay_rate=weight_decay),
                    private_keys=(PRIVATE,), loss_spec=LossSpec())
    return alg


@register("local", NoOptions, "Local: each client trains alone, no communication")
def build_local(model: nn.Module, ctx: BuildContext, options: NoOptions) -> Algorithm:
    return local(model, ctx.objective, lr=ctx.train.lr, weight_decay=ctx.train.weight_decay)
