"""An algorithm's own local step, as a chain of small gradient transforms (optax style).

A ``LocalUpdate`` turns one client's gradients into the change of its trainable tensors::

    updates, state = local_update.update(grads, state, params, StepInfo(step, num_steps, payload))
    params = params + updates

Every transform is a pure per-client function (the engine vmaps it over the clients of a round), so
proximal terms (FedProx), alternating head/body phases (FedRep), preconditioned LoRA steps (FLoRAL)
and per-tensor learning rates belong to the algorithm, not to the engine. ``chain`` composes them in
order; the last one is usually ``sgd``. The engines recognise the common case, ``plain_sgd()``
(preconditioning, weight decay and per-name SGD only), and run it with fused in-place updates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..adapters import precondition_lora_grads

Grads = dict[str, Tensor]
State = dict[str, Tensor]


class StepInfo(NamedTuple):
    """Where a local step is: its index in the round, the client's real step count, the download."""

    step: int
    num_steps: Tensor
    payload: Mapping[str, Tensor]


@dataclass(frozen=True)
class Transform:
    """One stage: ``init(params) -> state`` and ``update(grads, state, params, info) -> (grads, state)``.

    ``kind`` and ``options`` describe the stage to engines that run some chains with their own kernels.
    """

    kind: str
    update: Callable[[Grads, State, Mapping[str, Tensor], StepInfo], tuple[Grads, State]]
    init: Callable[[Mapping[str, Tensor]], State] = lambda params: {}
    options: tuple[tuple[str, object], ...] = ()

    def option(self, name: str) -> object:
        return dict(self.options)[name]


@dataclass(frozen=True)
class PlainSGD:
    """What the fused engine paths need of a plain chain: per-name rates, weight decay, LoRA eps."""

    rate: Callable[[str], float]
    weight_decay: float
    precondition_eps: float | None


@dataclass(frozen=True)
class LocalUpdate:
    """A chain of transforms; the state is one dict per stage (fresh each round)."""

    transforms: tuple[Transform, ...]

    def init(self, params: Mapping[str, Tensor]) -> tuple[State, ...]:
        return tuple(t.init(params) for t in self.transforms)

    def update(self, grads: Grads, state: tuple[State, ...], params: Mapping[str, Tensor],
               info: StepInfo) -> tuple[Grads, tuple[State, ...]]:
        new_state = []
        for t, s in zip(self.transforms, state, strict=True):
            grads, s = t.update(grads, s, params, info)
            new_state.append(s)
        return grads, tuple(new_state)

    def plain_sgd(self) -> PlainSGD | None:
        """The chain as (precondition_lora?, weight_decay?, sgd), or None when it is anything else."""
        kinds = [t.kind for t in self.transforms]
        if any(t.kind == "weight_decay" and t.option("exempt") for t in self.transforms):
            return None  # the fused paths decay every tensor: exemptions run through the general path
        if not kinds or kinds[-1] != "sgd" or kinds[:-1] not in ([], ["precondition_lora"], ["weight_decay"],
                                                                ["precondition_lora", "weight_decay"]):
            return None
        by_kind = {t.kind: t for t in self.transforms}
        eps = by_kind["precondition_lora"].option("eps") if "precondition_lora" in by_kind else None
        wd = by_kind["weight_decay"].option("weight_decay") if "weight_decay" in by_kind else 0.0
        return PlainSGD(by_kind["sgd"].option("rate"), float(wd), eps)


def chain(*transforms: Transform) -> LocalUpdate:
    """Compose transforms, applied in the order given."""
    return LocalUpdate(tuple(transforms))


def sgd(lr: float, lr_of: Callable[[str], float] | None = None) -> Transform:
    """updates = -rate(name) * grads, with ``lr_of(name)`` per tensor (router, adaptors, base) or ``lr``."""
    rate = (lambda name: lr) if lr_of is None else lr_of

    def update(grads, state, params, info):
        return {k: -rate(k) * g for k, g in grads.items()}, state

    return Transform("sgd", update, options=(("rate", rate),))


def weight_decay(decay: float, exempt: tuple[str, ...] = ()) -> Transform:
    """grads + decay * params (L2 regularisation as plain SGD applies it), except tensors whose name starts
    with a prefix in ``exempt`` (the official FLoRAL code does not decay the router)."""

    def update(grads, state, params, info):
        return {k: g if k.startswith(exempt) else g + decay * params[k] for k, g in grads.items()}, state

    return Transform("weight_decay", update, options=(("weight_decay", decay), ("exempt", exempt)))


def precondition_lora(eps: float) -> Transform:
    """ScaledGD / Riemannian preconditioning of every lora_A / lora_B gradient pair (FLoRAL's default)."""

    def update(grads, state, params, info):
        return precondition_lora_grads(params, grads, eps=eps), state

    return Transform("precondition_lora", update, options=(("eps", eps),))


def clip_norm(max_norm: float) -> Transform:
    """Scale a client's whole step direction (every gradient after preconditioning) to global L2 norm at most
    ``max_norm``: a trust region on each local step (ours; guards FLoRAL's ScaledGD steps while B is near 0)."""

    def update(grads, state, params, info):
        total = torch.sqrt(sum((g.to(torch.float64) ** 2).sum() for g in grads.values()))
        scale = torch.clamp(max_norm / (total + 1e-12), max=1.0)
        return {k: g * scale.to(g.dtype) for k, g in grads.items()}, state

    return Transform("clip_norm", update, options=(("max_norm", max_norm),))


def proximal(mu: float) -> Transform:
    """grads + mu * (params - downloaded): FedProx's proximal term mu/2 ||w - w_global||^2, as a gradient."""

    def update(grads, state, params, info):
        out = {}
        for k, g in grads.items():
            anchor = info.payload.get(k)
            out[k] = g if anchor is None or anchor.shape != g.shape else g + mu * (params[k] - anchor)
        return out, state

    return Transform("proximal", update, options=(("mu", mu),))


def alternate(first: Callable[[str], bool], fraction: float) -> Transform:
    """Two phases per round: the first ``fraction`` of a client's real steps move only the tensors
    ``first(name)`` selects, the remaining steps only the others (FedRep: head, then body)."""

    def update(grads, state, params, info):
        boundary = torch.ceil(info.num_steps.to(torch.float64) * fraction)
        in_first = (torch.as_tensor(info.step, dtype=torch.float64) < boundary)
        out = {}
        for k, g in grads.items():
            moving = in_first if first(k) else ~in_first
            out[k] = g * moving.to(g.dtype)
        return out, state

    return Transform("alternate", update, options=(("fraction", fraction),))


def local_sgd(lr: float, *, lr_of: Callable[[str], float] | None = None, weight_decay_rate: float = 0.0,
              precondition_eps: float | None = None, extra: tuple[Transform, ...] = (),
              decay_exempt: tuple[str, ...] = (), max_norm: float | None = None) -> LocalUpdate:
    """The usual chain: LoRA preconditioning (optional), a step-norm clip (optional), ``extra`` stages, weight
    decay (not of the tensors named by ``decay_exempt`` prefixes), per-name SGD."""
    stages: list[Transform] = []
    if precondition_eps is not None:
        stages.append(precondition_lora(precondition_eps))
    if max_norm is not None:
        stages.append(clip_norm(max_norm))
    stages += list(extra)
    if weight_decay_rate:
        stages.append(weight_decay(weight_decay_rate, decay_exempt))
    stages.append(sgd(lr, lr_of))
    return chain(*stages)
