"""Federated LoRA on a frozen pretrained base: FedIT, FFA-LoRA, FedSA-LoRA, local LoRA, Ditto, APFL.

The base weights are the template model's own (frozen) parameters: ``functional_call`` with
``strict=False`` uses them for every name a parameter dict leaves out, so the base is never sent,
never trained and never copied per client; only adaptor tensors (``...lora_A``/``...lora_B``) move.
Bytes are what the payload/upload dicts hold, so FFA-LoRA counts B only and FedSA-LoRA A only.
With ``[pretrain]`` the experiment pretrains the base before these builders run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..adapters import freeze_base, inject, name_matches, param_role
from ..checks import require
from .contract import (
    Algorithm,
    Finetune,
    Objective,
    Params,
    add_prefix,
    fedavg_aggregate,
    prefixed,
    stack_for_clients,
    task_loss,
)
from .fedavg import FinetuneOptions
from .local_update import local_sgd
from .registry import BuildContext, register
from .server_opt import ServerOptimizer, server_sgd

LOCAL, PERSONAL, GLOBAL = "local.", "personal.", "global."
MODEL = "model."  # the wrapped model's prefix inside a MixtureModel
APFL_ALPHA = "apfl.alpha"
APFL_W, APFL_V = "w.", "v."


def apfl_forward(template: nn.Module):
    """APFL's personalized model: alpha f_v(x) + (1 - alpha) f_w(x) from keys ``w.*``, ``v.*`` and alpha."""

    def forward(params: Params, x: Tensor) -> Tensor:
        a = params[APFL_ALPHA].clamp(0.0, 1.0)
        out_w = functional_call(template, prefixed(params, APFL_W), (x,), strict=False)
        out_v = functional_call(template, prefixed(params, APFL_V), (x,), strict=False)
        return a * out_v + (1 - a) * out_w

    return forward


def head_module(model: nn.Module) -> str:
    """The classification head's module path: ``model.head_module`` when set, else the last module with parameters."""
    named = getattr(model, "head_module", None)
    if named:
        return named
    owners = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners or not owners[-1]:
        raise ValueError("train_head: the model has no head module (no submodule holds parameters)")
    return owners[-1]


def lora_model(model: nn.Module, rank: int, targets: Iterable[str] | None = None,
               alpha: float = 1.0, train_head: bool = False) -> tuple[nn.Module, Params]:
    """Plain LoRA (one adaptor, pi = 1) on ``model``'s targeted layers; returns (template, initial adaptors).

    ``targets`` None uses ``model.lora_targets`` when the model defines it, else every Linear/Conv2d;
    layers the model never runs (``model.lora_exclude``, e.g. cached lower layers) never get a LoRA.
    ``train_head``: the head (``head_module``) gets no LoRA and its own weights join the initial
    tensors, so every method trains (and sends, or keeps) it like its adaptors.
    The template's base is frozen; the initial tensors (A random, B = 0, the head as loaded) are detached copies.
    """
    exclude = list(getattr(model, "lora_exclude", ()))
    head = head_module(model) if train_head else None
    if head is not None:
        if targets is not None and any(name_matches(head, t) for t in targets):
            raise ValueError(f"targets: {list(targets)} match the head {head!r}, which train_head = true trains "
                             "whole; drop it from targets or set train_head = false")
        exclude.append(head)
    if targets is None:
        targets = getattr(model, "lora_targets", None)
    wrapped = freeze_base(inject(model, num_adaptors=1, rank=rank, target_modules=targets, alpha=alpha,
                                 exclude=exclude))
    for p in wrapped.parameters():  # the template is only read through functional_call
        p.requires_grad_(False)
    init = {k: v.detach().clone() for k, v in wrapped.named_parameters() if param_role(k) == "adaptor"}
    if head is not None:
        prefix = f"{MODEL}{head}."
        init.update({k: v.detach().clone() for k, v in wrapped.named_parameters() if k.startswith(prefix)})
    return wrapped, init


def head_keys(init: Params) -> list[str]:
    """The trained head's tensors among a LoRA template's initial tensors (empty without train_head)."""
    return [k for k in init if param_role(k) == "base"]


def lora_algorithm(name: str, template: nn.Module, objective: Objective, lr: float, weight_decay: float, *,
                   lr_of=None, **functions) -> Algorithm:
    """An Algorithm over a LoRA template with plain local SGD (``lr_of``: a rate per tensor name)."""
    return Algorithm(name=name, model=template, objective=objective,
                     local_update=local_sgd(lr, lr_of=lr_of, weight_decay_rate=weight_decay), **functions)


def partitioned_lora(template: nn.Module, init: Params, objective: Objective, *, lr: float, name: str,
                     shared: Iterable[str], local: Iterable[str] = (), frozen: Iterable[str] = (),
                     weight_decay: float = 0.0, server_opt: ServerOptimizer | None = None,
                     finetune: tuple[int, float] | None = None) -> Algorithm:
    """LoRA whose adaptor tensors are split into shared (sent, FedAvg), local (private) and frozen (at init).

    FedIT: all shared. FFA-LoRA: B shared, A frozen. FedSA-LoRA: A shared, B local. Local LoRA: all local.
    ``finetune`` = (epochs, lr): fine-tune the non-frozen adaptors locally before each evaluation (FedIT+FT).
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
        return task_loss(alg.apply({**consts, **trainable}, batch["x"]), batch["y"], batch["w"], objective)

    def client_final(trainable, payload, client_state, num_examples, batches):
        return {k: trainable[k] for k in shared}, add_prefix({k: trainable[k] for k in local}, LOCAL)

    def personalize(server, client_state):
        return {**consts, **server["params"], **prefixed(client_state, LOCAL)}

    ft = Finetune(finetune[0], finetune[1], lambda k: k not in frozen) if finetune else None
    alg = lora_algorithm(name, template, objective, lr, weight_decay, init=init_fn,
                         broadcast=lambda s: dict(s["params"]), client_init=client_init, loss=loss,
                         client_final=client_final, aggregate=fedavg_aggregate(server_opt), personalize=personalize,
                         private_keys=(LOCAL,), finetune=ft)
    return alg


def ditto(template: nn.Module, init: Params, objective: Objective, *, lr: float, mu: float,
          weight_decay: float = 0.0, server_opt: ServerOptimizer | None = None) -> Algorithm:
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
        value = task_loss(alg.apply(g, batch["x"]), batch["y"], batch["w"], objective)
        value = value + task_loss(alg.apply(p, batch["x"]), batch["y"], batch["w"], objective)
        prox = sum(((p[k] - payload[k]) ** 2).sum() for k in p)
        return value + 0.5 * mu * prox

    def client_final(trainable, payload, client_state, num_examples, batches):
        return prefixed(trainable, GLOBAL), add_prefix(prefixed(trainable, PERSONAL), PERSONAL)

    alg = lora_algorithm("ditto", template, objective, lr, weight_decay, init=init_fn,
                         broadcast=lambda s: dict(s["params"]), client_init=client_init, loss=loss,
                         client_final=client_final, aggregate=fedavg_aggregate(server_opt),
                         personalize=lambda s, c: prefixed(c, PERSONAL), private_keys=(PERSONAL,))
    return alg


def apfl(template: nn.Module, init: Params, objective: Objective, *, lr: float, alpha_init: float,
         alpha_lr: float, weight_decay: float = 0.0, server_opt: ServerOptimizer | None = None) -> Algorithm:
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
        out_w = functional_call(template, w, (batch["x"],), strict=False)
        out_v = functional_call(template, v, (batch["x"],), strict=False)
        mixed = a * out_v + (1 - a) * out_w.detach()
        return (task_loss(out_w, batch["y"], batch["w"], objective)
                + task_loss(mixed, batch["y"], batch["w"], objective))

    def client_final(trainable, payload, client_state, num_examples, batches):
        state = add_prefix(prefixed(trainable, APFL_V), PERSONAL)
        state[APFL_ALPHA] = trainable[APFL_ALPHA].clamp(0.0, 1.0)
        return prefixed(trainable, APFL_W), state

    def personalize(server, client_state):
        return {**add_prefix(server["params"], APFL_W), **add_prefix(prefixed(client_state, PERSONAL), APFL_V),
                APFL_ALPHA: client_state[APFL_ALPHA]}

    return lora_algorithm("apfl", template, objective, lr, weight_decay, init=init_fn,
                          broadcast=lambda s: dict(s["params"]), client_init=client_init, loss=loss,
                          client_final=client_final, aggregate=fedavg_aggregate(server_opt), personalize=personalize,
                          forward=apfl_forward(template), private_keys=(PERSONAL, APFL_ALPHA),
                          lr_of=lambda k: alpha_lr if k == APFL_ALPHA else lr)


# ---------------------------------------------------------------------------------------------
# Registration of the federated LoRA baselines (``[algo.<name>]`` options for each).


@dataclass(frozen=True)
class LoraOptions:
    """LoRA on the frozen (pretrained) base: rank, scaling alpha, target layers (None: the model's default)."""

    #: LoRA rank r
    rank: int = 8
    #: LoRA scaling alpha: the update is alpha * B A (peft writes it as lora_alpha / r with lora_alpha = alpha * r)
    alpha: float = 1.0
    #: module name patterns that get LoRA (none: the model's default targets)
    targets: list[str] | None = None
    #: train the classification head whole (no LoRA on it), federated or private as the method treats
    #: lora_B (docs/potara.md); false: the head is frozen as loaded, with a LoRA when targeted
    train_head: bool = False

    def check(self, s: str) -> None:
        require(self.rank >= 1, f"{s}.rank", "an integer >= 1", self.rank)
        require(self.alpha > 0, f"{s}.alpha", "a number > 0", self.alpha)
        require(isinstance(self.train_head, bool), f"{s}.train_head", "true or false", self.train_head)

    def template(self, model: nn.Module) -> tuple[nn.Module, Params]:
        """(LoRA template over the frozen base, initial adaptors)."""
        return lora_model(model, self.rank, self.targets, self.alpha, self.train_head)


@dataclass(frozen=True)
class LoraFinetuneOptions(LoraOptions, FinetuneOptions):
    """FedIT + local fine-tuning of the LoRA before evaluation (epochs, lr; default lr: train.lr)."""

    def check(self, s: str) -> None:
        LoraOptions.check(self, s)
        FinetuneOptions.check(self, s)


@dataclass(frozen=True)
class DittoOptions(LoraOptions):
    """Ditto's proximal weight mu on ||personal - global||^2."""

    #: proximal weight mu on ||personal - global||^2
    mu: float = 0.1

    def check(self, s: str) -> None:
        super().check(s)
        require(self.mu >= 0, f"{s}.mu", "a number >= 0", self.mu)


@dataclass(frozen=True)
class ApflOptions(LoraOptions):
    """APFL's mixing alpha: initial value and its learning rate."""

    #: initial mixing weight alpha of the personal model
    alpha_init: float = 0.5
    #: learning rate of alpha
    alpha_lr: float = 0.01

    def check(self, s: str) -> None:
        super().check(s)
        require(0 <= self.alpha_init <= 1, f"{s}.alpha_init", "a number in [0, 1]", self.alpha_init)
        require(self.alpha_lr >= 0, f"{s}.alpha_lr", "a number >= 0", self.alpha_lr)


def common(ctx: BuildContext) -> dict:
    """Keyword arguments every LoRA builder passes on: learning rate, weight decay, server optimizer."""
    return {"lr": ctx.train.lr, "weight_decay": ctx.train.weight_decay, "server_opt": ctx.server_optimizer()}


def _keys(init: Params, leaf: str) -> list[str]:
    return [k for k in init if k.endswith(leaf)]


@register("fedit", LoraOptions, "FedIT: FedAvg of LoRA A and B on a frozen base")
def build_fedit(model: nn.Module, ctx: BuildContext, options: LoraOptions) -> Algorithm:
    t, init = options.template(model)
    return partitioned_lora(t, init, ctx.objective, name="fedit", shared=init, **common(ctx))


@register("fedit_ft", LoraFinetuneOptions, "FedIT, then local fine-tuning of the LoRA before evaluation")
def build_fedit_ft(model: nn.Module, ctx: BuildContext, options: LoraFinetuneOptions) -> Algorithm:
    t, init = options.template(model)
    ft = options.finetune(ctx.train.lr)
    return partitioned_lora(t, init, ctx.objective, name="fedit_ft", shared=init, finetune=(ft.epochs, ft.lr),
                            **common(ctx))


@register("ffa_lora", LoraOptions, "FFA-LoRA: A frozen at its random init, only B trained and sent")
def build_ffa_lora(model: nn.Module, ctx: BuildContext, options: LoraOptions) -> Algorithm:
    t, init = options.template(model)
    return partitioned_lora(t, init, ctx.objective, name="ffa_lora", shared=_keys(init, ".lora_B") + head_keys(init),
                            frozen=_keys(init, ".lora_A"), **common(ctx))


@register("fedsa_lora", LoraOptions, "FedSA-LoRA: A shared (FedAvg), B kept local")
def build_fedsa_lora(model: nn.Module, ctx: BuildContext, options: LoraOptions) -> Algorithm:
    t, init = options.template(model)
    return partitioned_lora(t, init, ctx.objective, name="fedsa_lora", shared=_keys(init, ".lora_A"),
                            local=_keys(init, ".lora_B") + head_keys(init), **common(ctx))


@register("local_lora", LoraOptions, "Local LoRA: each client trains its own LoRA, no communication")
def build_local_lora(model: nn.Module, ctx: BuildContext, options: LoraOptions) -> Algorithm:
    t, init = options.template(model)
    return partitioned_lora(t, init, ctx.objective, name="local_lora", shared=(), local=init, **common(ctx))


@register("ditto", DittoOptions, "Ditto: global LoRA by FedAvg plus a proximal personal LoRA")
def build_ditto(model: nn.Module, ctx: BuildContext, options: DittoOptions) -> Algorithm:
    t, init = options.template(model)
    return ditto(t, init, ctx.objective, mu=options.mu, **common(ctx))


@register("apfl", ApflOptions, "APFL: global and personal LoRA, outputs mixed by a learned alpha")
def build_apfl(model: nn.Module, ctx: BuildContext, options: ApflOptions) -> Algorithm:
    t, init = options.template(model)
    return apfl(t, init, ctx.objective, alpha_init=options.alpha_init, alpha_lr=options.alpha_lr, **common(ctx))
