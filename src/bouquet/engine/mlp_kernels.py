"""Hand-batched local SGD for MLP chains: every client of a round, explicit backward, fused updates.

The generic trainer (``autograd_training.train_vectorized``) differentiates an algorithm's loss with ``vmap``
and autograd. For the small models of the FLoRAL experiments that costs ~700 small tensor ops per
local step (selects, views, the C*r-wide adaptor products, separate update passes over the weights),
which on a CPU takes as long as the matmuls themselves. When the model is a chain of
``Flatten`` (first), ``Linear`` / ``MixtureLinear`` and ``ReLU``, this module runs the same SGD with
a few batched matmuls per layer and a hand-written backward: base weights are updated in place by one
fused ``baddbmm_`` (the weight gradient is never materialised), all C adaptors of a layer are one
rank-(C*r) product, and a step's trailing all-padding rows are skipped.

These kernels implement one loss (``LossSpec``: the task loss with pi = softmax(logits / T), minus an
entropy term) and one update rule (``LocalUpdate.plain_sgd``: per-name SGD, weight decay, LoRA
preconditioning); they are built only for an algorithm that declares both, and the engine checks their
first step against autograd on the algorithm's own loss before trusting them (``kernel_check``). Same
maths as the generic path, checked against the client-by-client ``train_sequential`` in
``tests/engine/test_mlp_kernels.py``. Anything outside the supported chain (other layers, router noise
or floor, inputs with extra dims) is not built or falls back to the generic trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..adapters import MEMBERS, EnsembleModel, MixtureModel, precondition_linear
from ..algorithms import LocalUpdate, LossSpec
from ..algorithms.contract import Batch, Params
from ..algorithms.local_update import PlainSGD
from ..algorithms.routing import ROUTER
from .batching import trailing_widths
from .mlp_chain import RELU, Dense, Layer, parse_chain

Trainer = Callable[[Params, Mapping[str, Tensor], Mapping[str, Tensor], Batch], tuple[Params, Tensor]]


@dataclass(frozen=True)
class _Declared:
    """The declared loss and update in the kernels' terms."""

    logits: str | None
    temperature: float
    entropy: float
    precondition_eps: float | None


def kernel_trainer(model: nn.Module, objective: str, update: LocalUpdate, spec: LossSpec | None,
                   fallback: Trainer | None = None) -> Trainer | None:
    """A trainer with ``train_vectorized``'s contract for a chain model, or None when the kernels do not apply.

    ``spec`` is the algorithm's declaration of its loss (where a multi-adaptor model's pi comes from;
    single adaptors use pi = [1] without a router) and ``update`` must be plain SGD (with LoRA
    preconditioning, which this trainer then applies itself). An Ensemble of plain chains (output
    sum_c pi_c f_c(x)) runs its C members as C times more rows of the client dimension. ``fallback``
    runs batches the chain cannot take (inputs that are not one vector per example).
    """
    plain = update.plain_sgd()
    if spec is None or not spec.closed_form or plain is None or objective not in ("classification", "regression"):
        return None  # router noise, floor and member skip are the conv kernels' only
    router = spec.router
    declared = _Declared(ROUTER if router is not None else None, router.temperature if router else 1.0,
                         router.entropy if router else 0.0, plain.precondition_eps)
    if isinstance(model, EnsembleModel):
        if declared.logits is None:
            return None
        chains = [parse_chain(m) for m in model.members]
        if any(c is None or c != chains[0] for c in chains) or any(
                isinstance(d, Dense) and d.num for d in chains[0]):
            return None  # members must be the same plain chain
        net = _Net(chains[0], [f"{MEMBERS}{c}." for c in range(len(chains))])
        inner = model.members[0]
    else:
        layers = parse_chain(model)
        if layers is None:
            return None
        if any(d.num > 1 for d in layers if isinstance(d, Dense)) and declared.logits is None:
            return None
        net = _Net(layers, [""])
        inner = model.model if isinstance(model, MixtureModel) else model
    flatten = isinstance(inner[0], nn.Flatten)

    def train(trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
              batches: Batch) -> tuple[Params, Tensor]:
        x = batches["x"]
        if not flatten and x.dim() != 4:  # [K, S, B, in]: one vector per example
            if fallback is None:
                raise ValueError(f"chain trainer: expected inputs [K, S, B, in], got {tuple(x.shape)}")
            return fallback(trainable, shared, private, batches)
        return _train(net, objective, plain, declared, trainable, shared, private, batches)

    return train


# ---------------------------------------------------------------------------------------------
# The round: working buffers, the step loop, and the layers' forward and backward.


@dataclass(frozen=True)
class _Net:
    """The chain's layers (parameter names relative to a member) and the members' name prefixes."""

    layers: list[Layer]
    members: list[str]


@dataclass
class _Work:
    """One Dense layer's working tensors for a round (adaptors in rank-concatenated layout).

    The leading dim is clients x members (members = 1 but for an Ensemble); ``lr`` maps the fields
    that are trained to their learning rate.
    """

    layer: Dense
    weight: Tensor  # [K*M, out, in]
    bias: Tensor | None  # [K*M, out]
    a_cat: Tensor | None = None  # [K, C*r, in]
    b_cat: Tensor | None = None  # [K, out, C*r]
    lora_bias: Tensor | None = None  # [K, C, out]
    lr: dict[str, float] = field(default_factory=dict)
    # saved by the forward for the backward
    h_in: Tensor | None = None
    scale: Tensor | None = None  # pi per rank channel, [K, 1, C*r]
    u: Tensor | None = None
    s: Tensor | None = None


_FIELDS = ("weight", "bias", "lora_A", "lora_B", "lora_bias")


def _train(net: _Net, task: str, optimizer: PlainSGD, spec: _Declared, trainable: Params,
           shared: Mapping[str, Tensor], private: Mapping[str, Tensor], batches: Batch) -> tuple[Params, Tensor]:
    params = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in trainable.items()}
    members = net.members

    def lookup_one(full: str) -> Tensor:
        return params[full] if full in params else private[full] if full in private else shared[full]

    def lookup(name: str) -> Tensor:
        if len(members) == 1:
            return lookup_one(members[0] + name)  # the trainer's own buffer when trained: updated in place
        # An Ensemble (plain members only): the members' tensors side by side, [K, M, ...] seen as [K*M, ...]
        # (a copy for the round, written back at its end).
        return torch.stack([lookup_one(p + name) for p in members], dim=1).flatten(0, 1)

    works = []
    for layer in net.layers:
        if not isinstance(layer, Dense):
            continue
        work = _Work(layer, lookup(layer.weight), lookup(layer.bias) if layer.bias else None)
        if layer.num:
            a = lookup(layer.lora_A)
            b = lookup(layer.lora_B)  # [K, C, out, r]
            work.a_cat = a.view(a.shape[0], layer.num * layer.rank, a.shape[-1])
            work.b_cat = b.permute(0, 2, 1, 3).reshape(b.shape[0], b.shape[2], layer.num * layer.rank)
            work.lora_bias = lookup(layer.lora_bias) if layer.lora_bias else None
        for f in _FIELDS:
            name = getattr(layer, f)
            if name is not None and members[0] + name in params:
                work.lr[f] = optimizer.rate(members[0] + name)
        works.append(work)
    wd = optimizer.weight_decay
    mixing = spec if spec.logits is not None else None
    logits = lookup_one(spec.logits) if mixing is not None else None
    router_lr = optimizer.rate(spec.logits) if mixing is not None and spec.logits in params else 0.0

    w = batches["w"]
    num_clients, num_steps = w.shape[:2]
    dtype = works[0].weight.dtype
    active = (w.sum(dim=2) > 0).to(dtype)  # [K, S]
    widths = trailing_widths(w)
    total = torch.zeros(num_clients, dtype=dtype, device=w.device)
    for s in range(num_steps):
        width = widths[s]
        if width == 0:
            continue  # no client has a real row: nothing changes
        mask = active[:, s]
        x = batches["x"][:, s, :width].reshape(num_clients, width, -1).to(dtype)
        batch = {"y": batches["y"][:, s, :width], "w": w[:, s, :width].to(dtype)}
        value, logits = _step(net, works, task, mixing, spec.precondition_eps, wd, logits, router_lr,
                              None if bool(mask.all()) else mask, x, batch)
        total += value * mask
    for work in works:
        layer = work.layer
        if layer.num and "lora_B" in work.lr:
            b = work.b_cat.view(num_clients, -1, layer.num, layer.rank).permute(0, 2, 1, 3)
            params[layer.lora_B] = b.contiguous()
        if len(members) > 1:  # back from the round's [K*M, ...] copies to each member's tensors
            for f in work.lr:
                t = getattr(work, f)
                for c, p in enumerate(members):
                    params[p + getattr(layer, f)] = t.view(num_clients, len(members), *t.shape[1:])[:, c].contiguous()
    if router_lr:
        params[spec.logits] = logits
    real_steps = active.sum(dim=1).clamp_min(1)
    return params, total / real_steps


def _step(net: _Net, works, task, mixing, eps, wd, logits, router_lr, mask, x, batch):
    """One SGD step of every client; returns (loss per client, logits after the step)."""
    num_clients, num_members = x.shape[0], len(net.members)
    pi = None if mixing is None else torch.softmax(logits.to(x.dtype) / mixing.temperature, dim=-1)
    layer_pi = pi if num_members == 1 else None  # an Ensemble mixes outputs, its members have no adaptors
    h = x if num_members == 1 else x.unsqueeze(1).expand(-1, num_members, -1, -1).flatten(0, 1)
    relu_masks: list[Tensor | None] = []
    i = 0
    for layer in net.layers:
        if layer == RELU:
            relu_masks[-1] = h > 0
            h = torch.relu(h)
            continue
        h = _forward(works[i], layer_pi, h)
        relu_masks.append(None)
        i += 1
    if num_members > 1:
        outs = h.view(num_clients, num_members, *h.shape[1:])
        h = torch.einsum("km,kmbo->kbo", pi, outs)
    value, g = _loss_grad(task, h, batch)
    gpi = torch.zeros_like(pi) if pi is not None else None
    member_mask = mask
    if num_members > 1:
        gpi += torch.einsum("kbo,kmbo->km", g, outs)
        g = (pi[:, :, None, None] * g[:, None]).flatten(0, 1)
        member_mask = None if mask is None else mask.repeat_interleave(num_members)
    for j in range(len(works) - 1, -1, -1):
        if relu_masks[j] is not None:
            g = g * relu_masks[j]
        g = _backward(works[j], layer_pi, g, gpi, member_mask, wd, eps, need_input=j > 0)
    if mixing is None:
        return value, logits
    if mixing.entropy:
        log_pi = torch.log(pi.clamp_min(1e-30))
        value = value + mixing.entropy * (pi * log_pi).sum(-1)  # - entropy * H(pi)
    if not router_lr:
        return value, logits
    grad = pi * (gpi - (pi * gpi).sum(-1, keepdim=True)) / mixing.temperature
    if mixing.entropy:
        plogp = (pi * log_pi).sum(-1, keepdim=True)
        grad = grad + (mixing.entropy / mixing.temperature) * pi * (log_pi - plogp)
    if wd:
        grad = grad + wd * logits
    if mask is not None:
        grad = grad * mask[:, None]
    return value, logits - router_lr * grad


def _rank_scale(pi: Tensor | None, layer: Dense, like: Tensor) -> Tensor:
    """pi_c repeated over each adaptor's r channels, [K, 1, C*r] (ones for a single adaptor without a router)."""
    if pi is None:
        return torch.ones(like.shape[0], 1, layer.num * layer.rank, dtype=like.dtype, device=like.device)
    return pi.repeat_interleave(layer.rank, dim=1)[:, None, :]


def _forward(work: _Work, pi: Tensor | None, h: Tensor) -> Tensor:
    """z = h W^T + b + alpha * sum_c pi_c (h A_c^T B_c^T + b_c), saving what the backward needs."""
    layer = work.layer
    work.h_in = h
    bias = work.bias
    if layer.num and work.lora_bias is not None:
        mixed = work.lora_bias.sum(1) if pi is None else torch.bmm(pi[:, None, :], work.lora_bias)[:, 0]
        bias = layer.alpha * mixed if bias is None else bias + layer.alpha * mixed
    z = torch.bmm(h, work.weight.mT) if bias is None else torch.baddbmm(bias[:, None, :], h, work.weight.mT)
    if layer.num:
        work.scale = _rank_scale(pi, layer, h)
        work.u = torch.bmm(h, work.a_cat.mT)  # [K, B, C*r]
        work.s = work.u * work.scale
        z.baddbmm_(work.s, work.b_cat.mT, alpha=layer.alpha)
    return z


def _loss_grad(task: str, out: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Each client's example-weighted mean loss and its gradient with respect to the outputs."""
    w = batch["w"]
    scale = (w / w.sum(dim=1, keepdim=True).clamp_min(1.0))[:, :, None]  # [K, B, 1]
    if task == "classification":
        y = batch["y"].long()
        logp = torch.log_softmax(out, dim=-1)
        value = -(logp.gather(2, y[:, :, None]) * scale).sum(dim=(1, 2))
        g = logp.exp_()
        g.scatter_add_(2, y[:, :, None], torch.full_like(y[:, :, None], -1, dtype=g.dtype))
        return value, g.mul_(scale)
    diff = out - batch["y"].to(out.dtype).reshape(out.shape)
    value = ((diff * diff).mean(dim=-1, keepdim=True) * scale).sum(dim=(1, 2))
    return value, diff.mul_(2.0 / out.shape[-1]).mul_(scale)


def _sgd_(param: Tensor, grad: Tensor, lr: float, wd: float, mask: Tensor | None) -> None:
    """param -= lr * (grad + wd * param), only for clients with a real batch this step."""
    if wd:
        grad = grad + wd * param
    if mask is not None:
        grad = grad * mask.view(-1, *([1] * (param.dim() - 1)))
    param.sub_(grad, alpha=lr)


def _backward(work: _Work, pi, g, gpi, mask, wd, eps, need_input: bool) -> Tensor | None:
    """Gradients of one layer from the output gradient g [K, B, out]; updates its parameters in place.

    Returns the input gradient (for the layer below) computed with the pre-update parameters.
    """
    layer, lr = work.layer, work.lr
    h, weight = work.h_in, work.weight
    g_in = torch.bmm(g, weight) if need_input else None
    gsum = g.sum(dim=1)  # [K, out]
    if layer.num:
        t = torch.bmm(g, work.b_cat)  # [K, B, C*r]: gradient of s, before alpha
        gu = t * (layer.alpha * work.scale)
        if gpi is not None:
            k = g.shape[0]
            gpi += layer.alpha * (t * work.u).sum(dim=1).view(k, layer.num, layer.rank).sum(dim=-1)
            if work.lora_bias is not None:
                gpi += layer.alpha * torch.bmm(work.lora_bias, gsum[:, :, None])[:, :, 0]
        if need_input:
            g_in.baddbmm_(gu, work.a_cat)
        if "lora_A" in lr or "lora_B" in lr:
            grad_a = torch.bmm(gu.mT, h)  # [K, C*r, in]
            grad_b = torch.bmm(g.mT, work.s).mul_(layer.alpha)  # [K, out, C*r]
            if eps is not None:
                grad_a, grad_b = _precondition(work, grad_a, grad_b, eps)
            if "lora_A" in lr:
                _sgd_(work.a_cat, grad_a, lr["lora_A"], wd, mask)
            if "lora_B" in lr:
                _sgd_(work.b_cat, grad_b, lr["lora_B"], wd, mask)
        if "lora_bias" in lr:
            mix = pi if pi is not None else torch.ones(g.shape[0], layer.num, dtype=g.dtype, device=g.device)
            _sgd_(work.lora_bias, layer.alpha * mix[:, :, None] * gsum[:, None, :], lr["lora_bias"], wd, mask)
    if "bias" in lr:
        _sgd_(work.bias, gsum, lr["bias"], wd, mask)
    if "weight" in lr:
        if wd:
            decay = 1.0 - lr["weight"] * wd * (mask if mask is not None else torch.ones_like(gsum[:, 0]))
            weight.mul_(decay.view(-1, 1, 1))
        gw = g if mask is None else g * mask.view(-1, 1, 1)
        weight.baddbmm_(gw.mT, h, alpha=-lr["weight"])  # the fused update: W -= lr * g^T h, no gradient tensor
    return g_in


def _precondition(work: _Work, grad_a: Tensor, grad_b: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """ScaledGD per adaptor c, on the rank-concatenated layout (same as ``precondition_linear``)."""
    layer = work.layer
    k, num, rank = grad_a.shape[0], layer.num, layer.rank
    a4 = work.a_cat.view(k, num, rank, -1)
    b4 = work.b_cat.view(k, -1, num, rank).permute(0, 2, 1, 3)
    ga4 = grad_a.view(k, num, rank, -1)
    gb4 = grad_b.view(k, -1, num, rank).permute(0, 2, 1, 3)
    new_a, new_b = precondition_linear(a4, b4, ga4, gb4, eps)
    return new_a.reshape(grad_a.shape), new_b.permute(0, 2, 1, 3).reshape(grad_b.shape)
