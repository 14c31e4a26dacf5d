"""Local Adaptor (FLoRAL's baseline): a federated base (FedAvg) plus one private low-rank adaptor per client.

The MixtureModel has C = 1, so pi = [1] and the router plays no part. Adaptor parameters live in
client state under ``adaptor.<name>`` and never leave the client.
"""

from __future__ import annotations

from torch.func import functional_call

from ..adapters import MixtureModel, param_role
from .base import Algorithm, LocalOptimizer, LossSpec, add_prefix, prefixed, stack_for_clients, task_loss, weighted_mean
from .floral import LearningRates, lora_preconditioner
from .server_opt import ServerOptimizer, server_sgd

PRIVATE = "adaptor."


def local_adaptor(model: MixtureModel, task: str, *, lr: float, lora_lr: float | None = None,
                  precondition: bool = True, precondition_eps: float = 1e-5,
                  server_opt: ServerOptimizer | None = None, weight_decay: float = 0.0,
                  name: str = "local_adaptor") -> Algorithm:
    """Build the Local Adaptor baseline over a single-adaptor MixtureModel."""
    if not isinstance(model, MixtureModel) or model.num_adaptors != 1:
        raise ValueError("local_adaptor needs a MixtureModel with exactly one adaptor per layer")
    model.eval()
    server_opt = server_opt or server_sgd(1.0)
    params0 = {k: v.detach().clone() for k, v in model.named_parameters() if param_role(k) != "router"}
    base0 = {k: v for k, v in params0.items() if param_role(k) == "base"}
    adaptor0 = {k: v for k, v in params0.items() if param_role(k) == "adaptor"}
    # The single adaptor's router is the constant pi = [1]; passing its logits explicitly keeps the template's
    # own (grad-requiring) parameter out of the loss, which would otherwise chain every step's graph.
    router0 = {k: v.detach().clone() for k, v in model.named_parameters() if param_role(k) == "router"}
    rates = LearningRates(lr, lr if lora_lr is None else lora_lr, 0.0)

    def init(gen, clusters):
        params = {k: v.clone() for k, v in base0.items()}
        return ({"params": params, "opt": server_opt.init(params)},
                add_prefix(stack_for_clients(adaptor0, len(clusters)), PRIVATE))

    def broadcast(server):
        return dict(server["params"])

    def client_init(payload, client_state, batches):
        return {**payload, **prefixed(client_state, PRIVATE)}

    def loss(trainable, payload, client_state, batch):
        out = functional_call(model, {**router0, **trainable}, (batch["x"],), strict=False)
        return task_loss(out, batch["y"], batch["w"], task)

    def client_final(trainable, payload, client_state, num_examples):
        upload = {k: v for k, v in trainable.items() if param_role(k) == "base"}
        private = {k: v for k, v in trainable.items() if param_role(k) == "adaptor"}
        return upload, add_prefix(private, PRIVATE)

    def aggregate(server, uploads, num_examples):
        avg = {k: weighted_mean(v, num_examples) for k, v in uploads.items()}
        params, opt = server_opt.update(server["params"], avg, server["opt"])
        return {"params": params, "opt": opt}

    def personalize(server, client_state):
        return {**server["params"], **prefixed(client_state, PRIVATE)}

    optimizer = LocalOptimizer(lr=lr, lr_of=rates.of, weight_decay=weight_decay,
                               grad_transform=lora_preconditioner(precondition_eps) if precondition else None)
    alg = Algorithm(name=name, model=model, task=task, init=init, broadcast=broadcast, client_init=client_init,
                    loss=loss, client_final=client_final, aggregate=aggregate, personalize=personalize,
                    optimizer=optimizer, private_keys=(PRIVATE,),
                    loss_spec=LossSpec(precondition_eps=precondition_eps if precondition else None))
    alg.hparams["param_counts"] = {"adaptors": sum(v.numel() for v in adaptor0.values()),
                                   "uploaded": sum(v.numel() for v in base0.values())}
    return alg
