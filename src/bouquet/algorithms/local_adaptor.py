"""Local Adaptor (FLoRAL's baseline): a federated base (FedAvg) plus one private low-rank adaptor per client.

The MixtureModel has C = 1, so pi = [1] and the router plays no part. Adaptor parameters live in
client state under ``adaptor.<name>`` and never leave the client.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..adapters import MixtureModel, param_role
from ..checks import require, require_rank
from .contract import (
    Algorithm,
    LossSpec,
    Objective,
    add_prefix,
    fedavg_aggregate,
    prefixed,
    stack_for_clients,
    task_loss,
)
from .floral import LearningRates, as_rank, wrap
from .local_update import local_sgd
from .registry import BuildContext, register
from .server_opt import ServerOptimizer, server_sgd

PRIVATE = "adaptor."


def local_adaptor(model: MixtureModel, objective: Objective, *, lr: float, lora_lr: float | None = None,
                  precondition: bool = True, precondition_eps: float = 1e-5,
                  server_opt: ServerOptimizer | None = None, weight_decay: float = 0.0,
                  name: str = "local_adaptor") -> Algorithm:
    """The Local Adaptor baseline over a single-adaptor MixtureModel."""
    if not isinstance(model, MixtureModel) or model.num_adaptors != 1:
        raise ValueError("local_adaptor needs a MixtureModel with exactly one adaptor per layer")
    server_opt = server_opt or server_sgd(1.0)
    params0 = {k: v.detach().clone() for k, v in model.named_parameters() if param_role(k) != "router"}
    base0 = {k: v for k, v in params0.items() if param_role(k) == "base"}
    adaptor0 = {k: v for k, v in params0.items() if param_role(k) == "adaptor"}
    rates = LearningRates(lr, lr if lora_lr is None else lora_lr, 0.0)

    def forward(params, x):
        # The single adaptor's mixture is the constant pi = [1], given explicitly: the template's own
        # (grad-requiring) router logits stay out of the loss, which would otherwise chain every step's graph.
        like = next(iter(params.values()))  # the parameters' dtype (float64 in the kernels' check), not x's
        return functional_call(model, params, (x,), {"pi": torch.ones(1, dtype=like.dtype, device=x.device)},
                               strict=False)

    def init(gen, clusters):
        params = {k: v.clone() for k, v in base0.items()}
        return ({"params": params, "opt": server_opt.init(params)},
                add_prefix(stack_for_clients(adaptor0, len(clusters)), PRIVATE))

    def broadcast(server):
        return dict(server["params"])

    def client_init(payload, client_state, batches):
        return {**payload, **prefixed(client_state, PRIVATE)}

    def loss(trainable, payload, client_state, batch):
        return task_loss(forward(trainable, batch["x"]), batch["y"], batch["w"], objective)

    def client_final(trainable, payload, client_state, num_examples, batches):
        upload = {k: v for k, v in trainable.items() if param_role(k) == "base"}
        private = {k: v for k, v in trainable.items() if param_role(k) == "adaptor"}
        return upload, add_prefix(private, PRIVATE)

    def personalize(server, client_state):
        return {**server["params"], **prefixed(client_state, PRIVATE)}

    update = local_sgd(lr, lr_of=rates.of, weight_decay_rate=weight_decay,
                       precondition_eps=precondition_eps if precondition else None)
    return Algorithm(name=name, model=model, objective=objective, init=init, broadcast=broadcast,
                     client_init=client_init, loss=loss, client_final=client_final,
                    aggregate=fedavg_aggregate(server_opt),
                     personalize=personalize, local_update=update, forward=forward, private_keys=(PRIVATE,),
                     loss_spec=LossSpec(),
                     param_counts={"adaptors": sum(v.numel() for v in adaptor0.values()),
                                   "uploaded": sum(v.numel() for v in base0.values())})


@dataclass(frozen=True)
class LocalAdaptorOptions:
    """Local Adaptor: one private adaptor per client on a federated base."""

    #: adaptor budget rho < 1 (adaptor ~ rho of each layer's weights) or an integer rank
    rank: float = 0.01
    #: a full-width bias per adaptor
    adaptor_bias: bool = True
    #: adaptor learning rate (none: train.lr)
    lora_lr: float | None = None
    #: ScaledGD / Riemannian LoRA preconditioning
    precondition: bool = True
    #: how a conv kernel is factored into ConvLoRA: 'balanced_2d', 'balanced', 'in' or 'out'
    conv_variant: str = "balanced_2d"
    #: official code: adaptor biases start at U(+-1/sqrt(r)), not zero
    paper_bias_init: bool = False
    #: official code: conv ranks computed with 2 kernel elements, not kh*kw
    paper_conv_rank_bug: bool = False

    def check(self, s: str) -> None:
        require_rank(self.rank, f"{s}.rank")
        require(self.lora_lr is None or self.lora_lr > 0, f"{s}.lora_lr", "none or a number > 0", self.lora_lr)


@register("local_adaptor", LocalAdaptorOptions, "Local Adaptor: federated base + one private adaptor per client")
def build_local_adaptor(model: nn.Module, ctx: BuildContext, options: LocalAdaptorOptions) -> Algorithm:
    mixture = wrap(model, 1, as_rank(options.rank), adaptor_bias=options.adaptor_bias,
                   init_bias="uniform" if options.paper_bias_init else "zeros", conv_variant=options.conv_variant,
                   paper_conv_rank_bug=options.paper_conv_rank_bug)
    return local_adaptor(mixture, ctx.objective, lr=ctx.train.lr, lora_lr=options.lora_lr,
                         precondition=options.precondition, server_opt=ctx.server_optimizer(),
                         weight_decay=ctx.train.weight_decay)
