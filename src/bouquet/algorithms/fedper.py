"""FedPer (Arivazhagan et al., 2019): a federated body and a private head per client, trained together.

The head is the set of layers named by ``head`` (module names, dotted suffixes, globs or regexes, as
``target_modules``); by default the model's last layer with parameters (the classifier). The body is
averaged by n_k like FedAvg; each client's head stays in its client state (``head.*``) and never leaves.
``personal_head`` is the shared form; FedRep (``fedrep``) adds its alternating local step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from ..adapters import name_matches
from .contract import (
    Algorithm,
    LossSpec,
    Objective,
    add_prefix,
    fedavg_aggregate,
    model_params,
    prefixed,
    stack_for_clients,
    task_loss,
)
from .local_update import LocalUpdate, local_sgd
from .registry import BuildContext, register
from .server_opt import ServerOptimizer, server_sgd

HEAD = "head."


def head_names(model: nn.Module, head: Iterable[str] | None = None) -> set[str]:
    """Parameter names of the head: modules matching ``head``, or the last module holding parameters."""
    owners = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError("the model has no parameters")
    chosen = [n for n, _ in owners if any(name_matches(n, p) for p in head)] if head else [owners[-1][0]]
    if not chosen:
        raise ValueError(f"head: no module matched {list(head or [])}; modules with parameters: "
                         f"{[n for n, _ in owners]}")
    names = {f"{n}.{p}" if n else p for n in chosen for p, _ in model.get_submodule(n).named_parameters(recurse=False)}
    if len(names) == sum(1 for _ in model.parameters()):
        raise ValueError("head: it covers every parameter of the model; nothing would be federated")
    return names


def personal_head(model: nn.Module, objective: Objective, head: set[str], *, local_update: LocalUpdate,
                  server_opt: ServerOptimizer | None = None, name: str) -> Algorithm:
    """A federated body (FedAvg by n_k) and private per-client heads (``head``: parameter names)."""
    server_opt = server_opt or server_sgd(1.0)
    params0 = model_params(model)
    body0 = {k: v for k, v in params0.items() if k not in head}
    head0 = {k: v for k, v in params0.items() if k in head}

    def init(gen, clusters):
        params = {k: v.clone() for k, v in body0.items()}
        return {"params": params, "opt": server_opt.init(params)}, add_prefix(stack_for_clients(head0, len(clusters)),
                                                                               HEAD)

    def broadcast(server):
        return dict(server["params"])

    def client_init(payload, client_state, batches):
        return {**payload, **prefixed(client_state, HEAD)}

    def loss(trainable, payload, client_state, batch):
        return task_loss(alg.apply(trainable, batch["x"]), batch["y"], batch["w"], objective)

    def client_final(trainable, payload, client_state, num_examples, batches):
        upload = {k: v for k, v in trainable.items() if k not in head}
        return upload, add_prefix({k: v for k, v in trainable.items() if k in head}, HEAD)

    def personalize(server, client_state):
        return {**server["params"], **prefixed(client_state, HEAD)}

    alg = Algorithm(name=name, model=model, objective=objective, init=init, broadcast=broadcast,
                    client_init=client_init, loss=loss, client_final=client_final,
                    aggregate=fedavg_aggregate(server_opt),
                    personalize=personalize, local_update=local_update, private_keys=(HEAD,), loss_spec=LossSpec(),
                    param_counts={"head": sum(v.numel() for v in head0.values()),
                                  "uploaded": sum(v.numel() for v in body0.values())})
    return alg


def fedper(model: nn.Module, objective: Objective, *, lr: float, head: Iterable[str] | None = None,
           weight_decay: float = 0.0, server_opt: ServerOptimizer | None = None) -> Algorithm:
    """FedPer: body and private head trained jointly by plain local SGD each round."""
    return personal_head(model, objective, head_names(model, head), server_opt=server_opt, name="fedper",
                         local_update=local_sgd(lr, weight_decay_rate=weight_decay))


@dataclass(frozen=True)
class HeadOptions:
    """Which layers are the private head (module name patterns; None = the last layer with parameters)."""

    #: module name patterns of the private head (none: the last layer with parameters)
    head: list[str] | None = None


@register("fedper", HeadOptions, "FedPer: federated body, private head per client, trained together")
def build_fedper(model: nn.Module, ctx: BuildContext, options: HeadOptions) -> Algorithm:
    return fedper(model, ctx.objective, lr=ctx.train.lr, head=options.head, weight_decay=ctx.train.weight_decay,
                  server_opt=ctx.server_optimizer())
