"""Local training: every client trains its own model alone; nothing is communicated."""

from __future__ import annotations

from torch import nn

from .base import Algorithm, LocalOptimizer, LossSpec, add_prefix, model_params, prefixed, stack_for_clients, task_loss

PRIVATE = "model."


def local(model: nn.Module, task: str, *, lr: float, weight_decay: float = 0.0) -> Algorithm:
    """Build the Local baseline: client state holds a full private model per client, same init for all."""
    init_params = model_params(model)

    def init(gen, clusters):
        return {}, add_prefix(stack_for_clients(init_params, len(clusters)), PRIVATE)

    def broadcast(server):
        return {}

    def client_init(payload, client_state, batches):
        return prefixed(client_state, PRIVATE)

    def loss(trainable, payload, client_state, batch):
        return task_loss(alg.apply(trainable, batch["x"]), batch["y"], batch["w"], task)

    def client_final(trainable, payload, client_state, num_examples):
        return {}, add_prefix(trainable, PRIVATE)

    def aggregate(server, uploads, num_examples):
        return server

    def personalize(server, client_state):
        return prefixed(client_state, PRIVATE)

    alg = Algorithm(name="local", model=model, task=task, init=init, broadcast=broadcast, client_init=client_init,
                    loss=loss, client_final=client_final, aggregate=aggregate, personalize=personalize,
                    optimizer=LocalOptimizer(lr=lr, weight_decay=weight_decay), private_keys=(PRIVATE,),
                    loss_spec=LossSpec())
    return alg
