"""Local SGD of many clients: one vmapped step for all clients of a round, or a client-by-client loop.

Both paths compute the same per-client SGD step, so they agree within float tolerance; the
sequential one (``make_step`` with ``torch.func.grad``, client by client) drops padding rows instead
of weighting them by zero, which makes it an independent reference for the padded, batched one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad, vmap

from ..algorithms.base import Batch, LocalOptimizer, Params
from .fast import fast_linear

# loss(trainable, shared, private, batch) -> scalar; ``shared`` is the same for every client (the
# payload), ``private`` has one slice per client (its client state).
LossFn = Callable[[Params, Mapping[str, Tensor], Mapping[str, Tensor], Batch], Tensor]


def make_step(loss_fn: LossFn, optimizer: LocalOptimizer, names: list[str]):
    """One SGD step of one client. A batch with no real example (all weights 0) changes nothing."""
    rates = {k: optimizer.rate(k) for k in names}

    def loss_and_value(trainable, shared, private, batch):
        value = loss_fn(trainable, shared, private, batch)
        return value, value.detach()

    def step(trainable: Params, shared, private, batch: Batch) -> tuple[Params, Tensor]:
        grads, value = grad(loss_and_value, has_aux=True)(trainable, shared, private, batch)
        if optimizer.grad_transform is not None:
            grads = optimizer.grad_transform(trainable, grads)
        active = (batch["w"].sum() > 0).to(value.dtype)
        new = {}
        for k, v in trainable.items():
            g = grads[k]
            if optimizer.weight_decay:
                g = g + optimizer.weight_decay * v
            new[k] = v - (rates[k] * active) * g
        return new, value * active

    return step


def train_vectorized(loss_fn: LossFn, optimizer: LocalOptimizer, trainable: Params,
                     shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
                     batches: Batch) -> tuple[Params, Tensor]:
    """All clients at once. ``trainable``/``private`` have a leading client dim; batches are [K, S, B, ...].

    Returns the trained parameters and each client's mean loss over its real steps.

    Same maths as ``make_step`` per client, arranged for speed: the loss is vmapped over clients and
    differentiated by plain autograd (the gradient of the sum of independent per-client losses is
    each client's own gradient), ``F.linear`` runs as ``FastLinear`` (contiguous weight gradients),
    and the parameters are updated in place in buffers owned by this call.
    """
    names = list(trainable)
    rates = [optimizer.rate(k) for k in names]
    vloss = vmap(loss_fn, in_dims=(0, None, 0, 0), randomness="different")
    vtransform = vmap(optimizer.grad_transform) if optimizer.grad_transform is not None else None
    w = batches["w"]
    num_clients, num_steps = w.shape[:2]
    dtype = batches["x"].dtype if batches["x"].is_floating_point() else w.dtype
    active = (w.sum(dim=2) > 0).to(dtype)  # [K, S]
    # One contiguous [K, B, ...] block per step (a no-op when the engine gathered them step-major).
    steps = {k: v.transpose(0, 1).contiguous() for k, v in batches.items()}
    params = [trainable[k].detach().clone(memory_format=torch.contiguous_format) for k in names]
    total = torch.zeros(num_clients, dtype=dtype, device=w.device)
    for s in range(num_steps):
        batch = {k: v[s] for k, v in steps.items()}
        leaves = [p.requires_grad_(True) for p in params]
        with torch.enable_grad(), fast_linear():
            values = vloss(dict(zip(names, leaves, strict=True)), shared, private, batch)
            grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
        for p in params:
            p.requires_grad_(False)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        if vtransform is not None:
            out = vtransform(dict(zip(names, params, strict=True)), dict(zip(names, grads, strict=True)))
            grads = [out[k] for k in names]
        mask = active[:, s]
        every = bool(mask.all())  # padding steps are rare: skip the per-client scale when there are none
        with torch.no_grad():
            for p, g, rate in zip(params, grads, rates, strict=True):
                if optimizer.weight_decay:
                    g = g + optimizer.weight_decay * p
                if not every:
                    g = g * mask.view(-1, *([1] * (p.dim() - 1)))
                p.add_(g, alpha=-rate)
            total += values.detach() * mask
    real_steps = active.sum(dim=1).clamp_min(1)
    return dict(zip(names, params, strict=True)), total / real_steps


def train_sequential(loss_fn: LossFn, optimizer: LocalOptimizer, trainable: Params,
                     shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
                     batches: Batch) -> tuple[Params, Tensor]:
    """The reference: clients one by one, steps one by one, padding rows removed."""
    step = make_step(loss_fn, optimizer, list(trainable))
    num_clients = batches["w"].shape[0]
    outs: list[Params] = []
    losses = []
    for k in range(num_clients):
        tr = {n: v[k] for n, v in trainable.items()}
        pv = {n: v[k] for n, v in private.items()}
        total, count = 0.0, 0
        for s in range(batches["w"].shape[1]):
            keep = batches["w"][k, s] > 0
            if not bool(keep.any()):
                continue
            batch = {n: v[k, s][keep] for n, v in batches.items()}
            tr, value = step(tr, shared, pv, batch)
            total, count = total + float(value), count + 1
        outs.append(tr)
        losses.append(total / max(count, 1))
    stacked = {n: torch.stack([o[n] for o in outs]) for n in trainable}
    return stacked, torch.tensor(losses, dtype=batches["x"].dtype)
