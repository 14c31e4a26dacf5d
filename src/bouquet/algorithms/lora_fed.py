"""Federated LoRA on a frozen pretrained base: FedIT, FFA-LoRA, FedSA-LoRA, local LoRA, Ditto, APFL.

The base weights are the template model's own (frozen) parameters: ``functional_call`` with
``strict=False`` uses them for every name a parameter dict leaves out, so the base is never sent,
never trained and never copied per client; only adaptor tensors (``...lora_A``/``...lora_B``) move.
Bytes are what the payload/upload dicts hold, so FFA-LoRA counts B only and FedSA-LoRA A only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..adapters import freeze_base, inject, param_role
from .base import (
    Algorithm,
    LocalOptimizer,
    Params,
    add_prefix,
    prefixed,
    stack_for_clients,
    task_loss,
    weighted_mean,
)
from .server_opt import ServerOptimizer, server_sgd

LOCAL, PERSONAL, GLOBAL = "local.", "personal.", "global."
APFL_ALPHA = "apfl.alpha"
APFL_W, APFL_V = "w.", "v."


class LoraAlgorithm(Algorithm):
    """An Algorithm whose ``apply`` also understands APFL's output mixture (keys ``w.*``, ``v.*``, alpha)."""

    def apply(self, params: Params, x: Tensor) -> Tensor:
        if APFL_ALPHA in params:
            a = params[APFL_ALPHA].clamp(0.0, 1.0)
            out_w = functional_call(self.model, prefixed(params, APFL_W), (x,), strict=False)
            out_v = functional_call(self.model, prefixed(params, APFL_V), (x,), strict=False)
            return a * out_v + (1 - a) * out_w
        return functional_call(self.model, params, (x,), strict=False)


def lora_model(model: nn.Module, rank: int, targets: Iterable[str] | None = None,
               alpha: float = 1.0) -> tuple[nn.Module, Params]:
    """Plain LoRA (one adaptor, pi = 1) on ``model``'s targeted layers; returns (template, initial adaptors).

    ``targets`` None uses ``model.lora_targets`` when the model defines it, else every Linear/Conv2d.
    The template's base is frozen; the initial adaptors (A random, B = 0) are detached copies.
    """
    if targets is None:
        targets = getattr(model, "lora_targets", None)
    wrapped = freeze_base(inject(model, num_adaptors=1, rank=rank, target_modules=targets, alpha=alpha))
    for p in wrapped.parameters():  # the template is only read through functional_call
        p.requires_grad_(False)
    init = {k: v.detach().clone() for k, v in wrapped.named_parameters() if param_role(k) == "adaptor"}
    return wrapped, init


def _build(name, template, task, lr, weight_decay, *, lr_of=None, **fns) -> LoraAlgorithm:
    fns.setdefault("private_keys", ())
    return LoraAlgorithm(name=name, model=template, task=task,
                         optimizer=LocalOptimizer(lr=lr, lr_of=lr_of, weight_decay=weight_decay), **fns)


def _fedavg_step(server_opt: ServerOptimizer):
    def aggregate(server, uploads, num_examples):
        avg = {k: weighted_mean(v, num_examples) for k, v in uploads.items()}
        params, opt = server_opt.update(server["params"], avg, server["opt"])
        return {**server, "params": params, "opt": opt}

    return aggregate


def partitioned_lora(template: nn.Module, init: Params, task: str, *, lr: float, name: str,
                     shared: Iterable[str], local: Iterable[str] = (), frozen: Iterable[str] = (),
                     weight_decay: float = 0.0, server_opt: ServerOptimizer | None = None,
                     finetune: bool = False) -> LoraAlgorithm:
    """LoRA whose adaptor tensors are split into shared (sent, FedAvg), local (private) and frozen (at init).

    FedIT: all shared. FFA-LoRA: B shared, A frozen. FedSA-LoRA: A shared, B local. Local LoRA: all local.
    """
    shared, local, frozen = set(shared), set(local), set(frozen)
    if shared | local | frozen != set(init) or len(shared) + len(local) + len(frozen) != len(init):
        raise ValueError("shared, local and frozen must partition the adaptor tensors")
    server_opt = server_opt or server_sgd(1.0)
    consts = {k: init[k] for k in frozen}

    def init_fn(gen, clusters):
        params = {k: init[k].clone() for k in shared}
        states = add_prefix(stack_for_clients({k: init[k] for k in local}, len(clusters)), LOCAL) if local else {}
        return {"params": params, "opt": server_opt.init(params)}, states

    def client_init(payload, client_state, batches):
        return {**payload, **prefixed(client_state, LOCAL)}

    def loss(trainable, payload, client_state, batch):
        return task_loss(alg.apply({**consts, **trainable}, batch["x"]), batch["y"], batch["w"], task)

    def client_final(trainable, payload, client_state, num_examples):
        return {k: trainable[k] for k in shared}, add_prefix({k: trainable[k] for k in local}, LOCAL)

    def personalize(server, client_state):
        return {**consts, **server["params"], **prefixed(client_state, LOCAL)}

    alg = _build(name, template, task, lr, weight_decay, init=init_fn, broadcast=lambda s: dict(s["params"]),
                 client_init=client_init, loss=loss, client_final=client_final,
                 aggregate=_fedavg_step(server_opt), personalize=personalize, private_keys=(LOCAL,),
                 finetune_filter=(lambda k: k not in frozen) if finetune else None)
    return alg


def ditto(template: nn.Module, init: Params, task: str, *, lr: float, mu: float, weight_decay: float = 0.0,
          server_opt: ServerOptimizer | None = None) -> LoraAlgorithm:
    """Ditto (Li et al. 2021): a global LoRA by FedAvg and a personal LoRA pulled towards the received global.

    loss = L(global) + L(personal) + mu/2 ||personal - received||^2; the two parts touch disjoint
    parameters, so one SGD step on the sum is one step on each objective.
    """
    server_opt = server_opt or server_sgd(1.0)

    def init_fn(gen, clusters):
        params = {k: v.clone() for k, v in init.items()}
        return {"params": params, "opt": server_opt.init(params)}, add_prefix(
            stack_for_clients(init, len(clusters)), PERSONAL)

    def client_init(payload, client_state, batches):
        return {**add_prefix(payload, GLOBAL), **add_prefix(prefixed(client_state, PERSONAL), PERSONAL)}

    def loss(trainable, payload, client_state, batch):
        g, p = prefixed(trainable, GLOBAL), prefixed(trainable, PERSONAL)
        value = task_loss(alg.apply(g, batch["x"]), batch["y"], batch["w"], task)
        value = value + task_loss(alg.apply(p, batch["x"]), batch["y"], batch["w"], task)
        prox = sum(((p[k] - payload[k]) ** 2).sum() for k in p)
        return value + 0.5 * mu * prox

    def client_final(trainable, payload, client_state, num_examples):
        return prefixed(trainable, GLOBAL), add_prefix(prefixed(trainable, PERSONAL), PERSONAL)

    alg = _build("ditto", template, task, lr, weight_decay, init=init_fn, broadcast=lambda s: dict(s["params"]),
                 client_init=client_init, loss=loss, client_final=client_final,
                 aggregate=_fedavg_step(server_opt), personalize=lambda s, c: prefixed(c, PERSONAL),
                 private_keys=(PERSONAL,))
    return alg


def apfl(template: nn.Module, init: Params, task: str, *, lr: float, alpha_init: float, alpha_lr: float,
         weight_decay: float = 0.0, server_opt: ServerOptimizer | None = None) -> LoraAlgorithm:
    """APFL (Deng et al. 2020): outputs alpha f_v + (1 - alpha) f_w with a learned alpha per client.

    The global LoRA w learns from its own loss only (w is detached inside the mixture); the personal
    LoRA v and alpha learn from the mixture's loss; alpha is clipped to [0, 1] after each round.
    """
    server_opt = server_opt or server_sgd(1.0)

    def init_fn(gen, clusters):
        params = {k: v.clone() for k, v in init.items()}
        states = add_prefix(stack_for_clients(init, len(clusters)), PERSONAL)
        states[APFL_ALPHA] = torch.full((len(clusters),), float(alpha_init))
        return {"params": params, "opt": server_opt.init(params)}, states

    def client_init(payload, client_state, batches):
        return {**add_prefix(payload, APFL_W), **add_prefix(prefixed(client_state, PERSONAL), APFL_V),
                APFL_ALPHA: client_state[APFL_ALPHA]}

    def loss(trainable, payload, client_state, batch):
        w, v = prefixed(trainable, APFL_W), prefixed(trainable, APFL_V)
        a = trainable[APFL_ALPHA].clamp(0.0, 1.0)
        out_w = alg.apply(w, batch["x"])
        out_v = alg.apply(v, batch["x"])
        mixed = a * out_v + (1 - a) * out_w.detach()
        return (task_loss(out_w, batch["y"], batch["w"], task)
                + task_loss(mixed, batch["y"], batch["w"], task))

    def client_final(trainable, payload, client_state, num_examples):
        state = add_prefix(prefixed(trainable, APFL_V), PERSONAL)
        state[APFL_ALPHA] = trainable[APFL_ALPHA].clamp(0.0, 1.0)
        return prefixed(trainable, APFL_W), state

    def personalize(server, client_state):
        return {**add_prefix(server["params"], APFL_W), **add_prefix(prefixed(client_state, PERSONAL), APFL_V),
                APFL_ALPHA: client_state[APFL_ALPHA]}

    alg = _build("apfl", template, task, lr, weight_decay, init=init_fn, broadcast=lambda s: dict(s["params"]),
                 client_init=client_init, loss=loss, client_final=client_final,
                 aggregate=_fedavg_step(server_opt), personalize=personalize,
                 private_keys=(PERSONAL, APFL_ALPHA),
                 lr_of=lambda k: alpha_lr if k == APFL_ALPHA else lr)
    return alg
