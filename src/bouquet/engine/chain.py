"""Hand-batched local SGD for MLP chains: every client of a round, explicit backward, fused updates.

The generic trainer (``training.train_vectorized``) differentiates an algorithm's loss with ``vmap``
and autograd. For the small models of the FLoRAL experiments that costs ~700 small tensor ops per
local step (selects, views, the C*r-wide adaptor products, separate update passes over the weights),
which on a CPU takes as long as the matmuls themselves. When the model is a chain of
``Flatten`` (first), ``Linear`` / ``MixtureLinear`` and ``ReLU``, this module runs the same SGD with
a few batched matmuls per layer and a hand-written backward: base weights are updated in place by one
fused ``baddbmm_`` (the weight gradient is never materialised), all C adaptors of a layer are one
rank-(C*r) product, and a step's trailing all-padding rows are skipped.

Same maths as the generic path, checked against the client-by-client ``train_sequential`` in
``tests/engine/test_chain.py``. Anything outside the supported chain (other layers, router noise or
floor, inputs with extra dims) is not built or falls back to the generic trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..adapters import MixtureLinear, MixtureModel
from ..adapters.precondition import precondition_linear
from ..algorithms.base import Batch, LocalOptimizer, LossSpec, Params

Trainer = Callable[[Params, Mapping[str, Tensor], Mapping[str, Tensor], Batch], tuple[Params, Tensor]]


@dataclass(frozen=True)
class Dense:
    """One Linear layer: parameter names (None when absent) and its adaptor bank (num = 0: plain Linear)."""

    weight: str
    bias: str | None
    lora_A: str | None = None
    lora_B: str | None = None
    lora_bias: str | None = None
    num: int = 0
    rank: int = 0
    alpha: float = 1.0


RELU = "relu"
Layer = Dense | str


def parse_chain(model: nn.Module) -> list[Layer] | None:
    """The layers of ``model`` (or of a MixtureModel's inner model) as a chain, or None if not one.

    Supported: an ``nn.Sequential`` of ``Flatten`` (as the first layer only), ``Linear``,
    ``MixtureLinear`` and ``ReLU``; anything else returns None (the caller keeps the generic trainer).
    """
    prefix, seq = ("model.", model.model) if isinstance(model, MixtureModel) else ("", model)
    if not isinstance(seq, nn.Sequential):
        return None
    layers: list[Layer] = []
    for i, (name, m) in enumerate(seq.named_children()):
        if isinstance(m, nn.ReLU) and not layers:
            return None
        p = f"{prefix}{name}."
        if isinstance(m, nn.Flatten) and i == 0 and m.start_dim == 1 and m.end_dim == -1:
            continue  # the trainer flattens every example to [in] anyway
        if isinstance(m, MixtureLinear):
            layers.append(Dense(p + "base.weight", p + "base.bias" if m.base.bias is not None else None,
                                p + "lora_A", p + "lora_B", p + "lora_bias" if m.lora_bias is not None else None,
                                m.num_adaptors, m.rank, m.alpha))
        elif isinstance(m, nn.Linear):
            layers.append(Dense(p + "weight", p + "bias" if m.bias is not None else None))
        elif isinstance(m, nn.ReLU):
            layers.append(RELU)
        else:
            return None
    dense = [layer for layer in layers if isinstance(layer, Dense)]
    if not dense or not isinstance(layers[-1], Dense):
        return None
    return layers


def chain_trainer(model: nn.Module, task: str, optimizer: LocalOptimizer, spec: LossSpec,
                  fallback: Trainer | None = None) -> Trainer | None:
    """A trainer with ``train_vectorized``'s contract for a chain model, or None when ``model`` is not one.

    ``spec`` is the algorithm's declaration of its loss: where a multi-adaptor model's pi comes from
    (single adaptors use pi = [1] without a router) and whether its ``grad_transform`` is the LoRA
    preconditioner, which this trainer then applies itself. ``fallback`` runs batches the chain
    cannot take (inputs that are not one vector per example).
    """
    layers = parse_chain(model)
    if layers is None or task not in ("classification", "regression"):
        return None
    if any(d.num > 1 for d in layers if isinstance(d, Dense)) and spec.logits is None:
        return None
    inner = model.model if isinstance(model, MixtureModel) else model
    flatten = isinstance(inner[0], nn.Flatten)
    mixing = spec if spec.logits is not None else None
    eps = spec.precondition_eps

    def train(trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
              batches: Batch) -> tuple[Params, Tensor]:
        x = batches["x"]
        if not flatten and x.dim() != 4:  # [K, S, B, in]: one vector per example
            if fallback is None:
                raise ValueError(f"chain trainer: expected inputs [K, S, B, in], got {tuple(x.shape)}")
            return fallback(trainable, shared, private, batches)
        return _train(layers, task, optimizer, mixing, eps, trainable, shared, private, batches)

    return train


# ---------------------------------------------------------------------------------------------
# The round: working buffers, the step loop, and the layers' forward and backward.


@dataclass
class _Work:
    """One Dense layer's working tensors for a round (adaptors in rank-concatenated layout)."""

    layer: Dense
    weight: Tensor  # [K, out, in]
    bias: Tensor | None  # [K, out]
    a_cat: Tensor | None = None  # [K, C*r, in]
    b_cat: Tensor | None = None  # [K, out, C*r]
    lora_bias: Tensor | None = None  # [K, C, out]
    # saved by the forward for the backward
    h_in: Tensor | None = None
    u: Tensor | None = None
    s: Tensor | None = None


def _train(layers: list[Layer], task: str, optimizer: LocalOptimizer, mixing: LossSpec | None,
           eps: float | None, trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
           batches: Batch) -> tuple[Params, Tensor]:
    names = list(trainable)
    params = {k: trainable[k].detach().clone(memory_format=torch.contiguous_format) for k in names}

    def lookup(name: str) -> Tensor:
        if name in params:
            return params[name]
        return private[name] if name in private else shared[name]

    works = []
    for layer in layers:
        if not isinstance(layer, Dense):
            continue
        work = _Work(layer, lookup(layer.weight), lookup(layer.bias) if layer.bias else None)
        if layer.num:
            a = lookup(layer.lora_A)
            b = lookup(layer.lora_B)  # [K, C, out, r]
            work.a_cat = a.view(a.shape[0], layer.num * layer.rank, a.shape[-1])
            work.b_cat = b.permute(0, 2, 1, 3).reshape(b.shape[0], b.shape[2], layer.num * layer.rank)
            work.lora_bias = lookup(layer.lora_bias) if layer.lora_bias else None
        works.append(work)
    rate = {k: optimizer.rate(k) for k in names}
    wd = optimizer.weight_decay
    logits = lookup(mixing.logits) if mixing is not None else None
    train_router = mixing is not None and mixing.logits in params and rate[mixing.logits] != 0.0

    w = batches["w"]
    num_clients, num_steps = w.shape[:2]
    dtype = works[0].weight.dtype
    active = (w.sum(dim=2) > 0).to(dtype)  # [K, S]
    real = (w > 0).any(dim=0)  # [S, B]: rows real in some client
    widths = (real.shape[1] - real.flip(1).int().argmax(dim=1)).where(real.any(dim=1), 0).tolist()
    total = torch.zeros(num_clients, dtype=dtype, device=w.device)
    for s in range(num_steps):
        width = widths[s]
        if width == 0:
            continue  # no client has a real row: nothing changes
        mask = active[:, s]
        every = bool(mask.all())
        x = batches["x"][:, s, :width].reshape(num_clients, width, -1).to(dtype)
        batch = {"y": batches["y"][:, s, :width], "w": w[:, s, :width].to(dtype)}
        value = _step(layers, works, task, mixing, eps, rate, wd, logits, train_router,
                      None if every else mask, x, batch)
        if train_router:
            logits = value[1]
        total += value[0] * mask
    for work in works:
        layer = work.layer
        if layer.num and layer.lora_B in params:
            b = work.b_cat.view(num_clients, -1, layer.num, layer.rank).permute(0, 2, 1, 3)
            params[layer.lora_B] = b.contiguous()
    if train_router:
        params[mixing.logits] = logits
    real_steps = active.sum(dim=1).clamp_min(1)
    return params, total / real_steps


def _step(layers, works, task, mixing, eps, rate, wd, logits, train_router, mask, x, batch):
    """One SGD step of every client; returns (loss per client, new logits or None)."""
    pi = None if mixing is None else torch.softmax(logits.to(x.dtype) / mixing.temperature, dim=-1)
    h = x
    relu_masks: list[Tensor | None] = []
    i = 0
    for layer in layers:
        if layer == RELU:
            relu_masks[-1] = h > 0
            h = torch.relu(h)
            continue
        h = _forward(works[i], pi, h)
        relu_masks.append(None)
        i += 1
    value, g = _loss_grad(task, h, batch)
    gpi = torch.zeros_like(pi) if pi is not None else None
    for j in range(len(works) - 1, -1, -1):
        work = works[j]
        if relu_masks[j] is not None:
            g = g * relu_masks[j]
        g = _backward(work, pi, g, gpi, mask, rate, wd, eps, need_input=j > 0)
    new_logits = None
    if mixing is not None:
        if mixing.entropy:
            log_pi = torch.log(pi.clamp_min(1e-30))
            value = value + mixing.entropy * (pi * log_pi).sum(-1)  # - entropy * H(pi)
        if train_router:
            grad = pi * (gpi - (pi * gpi).sum(-1, keepdim=True)) / mixing.temperature
            if mixing.entropy:
                plogp = (pi * log_pi).sum(-1, keepdim=True)
                grad = grad + (mixing.entropy / mixing.temperature) * pi * (log_pi - plogp)
            if wd:
                grad = grad + wd * logits
            if mask is not None:
                grad = grad * mask[:, None]
            new_logits = logits - rate[mixing.logits] * grad
    return value, new_logits


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
        work.u = torch.bmm(h, work.a_cat.mT)  # [K, B, C*r]
        work.s = work.u * _rank_scale(pi, layer, h)
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


def _backward(work: _Work, pi, g, gpi, mask, rate, wd, eps, need_input: bool) -> Tensor | None:
    """Gradients of one layer from the output gradient g [K, B, out]; updates its parameters in place.

    Returns the input gradient (for the layer below) computed with the pre-update parameters.
    """
    layer = work.layer
    h, weight = work.h_in, work.weight
    g_in = torch.bmm(g, weight) if need_input else None
    gsum = g.sum(dim=1)  # [K, out]
    if layer.num:
        t = torch.bmm(g, work.b_cat)  # [K, B, C*r]: gradient of s, before alpha
        scale = _rank_scale(pi, layer, h)
        gu = t * (layer.alpha * scale)
        if gpi is not None:
            k = g.shape[0]
            gpi += layer.alpha * (t * work.u).sum(dim=1).view(k, layer.num, layer.rank).sum(dim=-1)
            if work.lora_bias is not None:
                gpi += layer.alpha * torch.bmm(work.lora_bias, gsum[:, :, None])[:, :, 0]
        if need_input:
            g_in.baddbmm_(gu, work.a_cat)
        names = (layer.lora_A, layer.lora_B)
        if names[0] in rate or names[1] in rate:
            grad_a = torch.bmm(gu.mT, h)  # [K, C*r, in]
            grad_b = torch.bmm(g.mT, work.s).mul_(layer.alpha)  # [K, out, C*r]
            if eps is not None:
                grad_a, grad_b = _precondition(work, grad_a, grad_b, eps)
            if names[0] in rate:
                _sgd_(work.a_cat, grad_a, rate[names[0]], wd, mask)
            if names[1] in rate:
                _sgd_(work.b_cat, grad_b, rate[names[1]], wd, mask)
        if work.lora_bias is not None and layer.lora_bias in rate:
            mix = pi if pi is not None else torch.ones(g.shape[0], layer.num, dtype=g.dtype, device=g.device)
            _sgd_(work.lora_bias, layer.alpha * mix[:, :, None] * gsum[:, None, :], rate[layer.lora_bias], wd, mask)
    if layer.bias is not None and layer.bias in rate:
        _sgd_(work.bias, gsum, rate[layer.bias], wd, mask)
    if layer.weight in rate:
        lr = rate[layer.weight]
        if wd:
            decay = 1.0 - lr * wd * (mask if mask is not None else torch.ones_like(gsum[:, 0]))
            weight.mul_(decay.view(-1, 1, 1))
        gw = g if mask is None else g * mask.view(-1, 1, 1)
        weight.baddbmm_(gw.mT, h, alpha=-lr)  # the fused update: W -= lr * g^T h, no gradient tensor
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
