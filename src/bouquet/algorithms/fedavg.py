"""FedAvg (McMahan et al.): one global model, clients run local SGD, the server averages by n_k.

With ``finetune_epochs > 0`` in the run, evaluation fine-tunes the global model on each client's
data first: the "FedAvg + local fine-tuning" baseline.
"""

from __future__ import annotations

from torch import nn

from .base import Algorithm, LocalOptimizer, LossSpec, model_params, task_loss, weighted_mean
from .server_opt import ServerOptimizer, server_sgd


def fedavg(model: nn.Module, task: str, *, lr: float, weight_decay: float = 0.0,
           server_opt: ServerOptimizer | None = None, name: str = "fedavg") -> Algorithm:
    """Build FedAvg over ``model`` (its current parameters are the initial global model)."""
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
        out = alg.apply(trainable, batch["x"])
        return task_loss(out, batch["y"], batch["w"], task)

    def client_final(trainable, payload, client_state, num_examples):
        return dict(trainable), {}

    def aggregate(server, uploads, num_examples):
        avg = {k: weighted_mean(v, num_examples) for k, v in uploads.items()}
        params, opt = server_opt.update(server["params"], avg, server["opt"])
        return {"params": params, "opt": opt}

    def personalize(server, client_state):
        return server["params"]

    alg = Algorithm(name=name, model=model, task=task, init=init, broadcast=broadcast, client_init=client_init,
                    loss=loss, client_final=client_final, aggregate=aggregate, personalize=personalize,
                    optimizer=LocalOptimizer(lr=lr, weight_decay=weight_decay),
                    finetune_filter=lambda name: True, loss_spec=LossSpec())
    return alg
