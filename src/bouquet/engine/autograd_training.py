"""Local training of many clients through autograd: one vmapped step for all clients of a round, or a
client-by-client loop.

Both paths run the algorithm's own local step (its loss, differentiated, then its ``LocalUpdate``),
so they agree within float tolerance; the sequential one (``make_step`` with ``torch.func.grad``,
client by client) drops padding rows instead of weighting them by zero, which makes it an independent
reference for the padded, batched one. A plain-SGD update (``LocalUpdate.plain_sgd``) takes a fused
in-place path with the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad, vmap

from ..adapters import precondition_lora_grads
from ..algorithms import LocalUpdate, StepInfo
from ..algorithms.contract import Batch, Params
from .fast_linear import fast_linear

# loss(trainable, shared, private, batch) -> scalar; ``shared`` is the same for every client (the
# payload), ``private`` has one slice per client (its client state).
LossFn = Callable[[Params, Mapping[str, Tensor], Mapping[str, Tensor], Batch], Tensor]


def make_step(loss_fn: LossFn, update: LocalUpdate, names: list[str]):
    """One local step of one client: ``step(trainable, shared, private, batch, info, state)``.

    Returns (new trainable, loss, new update state). The caller skips batches without a real example.
    """
    plain = update.plain_sgd()
    rates = {k: plain.rate(k) for k in names} if plain is not None else {}

    def loss_and_value(trainable, shared, private, batch):
        value = loss_fn(trainable, shared, private, batch)
        return value, value.detach()

    def step(trainable: Params, shared, private, batch: Batch, info: StepInfo, state):
        grads, value = grad(loss_and_value, has_aux=True)(trainable, shared, private, batch)
        if plain is None:
            updates, state = update.update(grads, state, trainable, info)
            return {k: v + updates[k] for k, v in trainable.items()}, value, state
        if plain.precondition_eps is not None:
            grads = precondition_lora_grads(trainable, grads, eps=plain.precondition_eps)
        new = {}
        for k, v in trainable.items():
            g = grads[k]
            if plain.weight_decay:
                g = g + plain.weight_decay * v
            new[k] = v - rates[k] * g
        return new, value, state

    return step


def train_vectorized(loss_fn: LossFn, update: LocalUpdate, trainable: Params,
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
    plain = update.plain_sgd()
    vloss = vmap(loss_fn, in_dims=(0, None, 0, 0), randomness="different")
    w = batches["w"]
    num_clients, num_steps = w.shape[:2]
    dtype = batches["x"].dtype if batches["x"].is_floating_point() else w.dtype
    active = (w.sum(dim=2) > 0).to(dtype)  # [K, S]
    # One contiguous [K, B, ...] block per step (a no-op when the engine gathered them step-major).
    steps = {k: v.transpose(0, 1).contiguous() for k, v in batches.items()}
    params = [trainable[k].detach().clone(memory_format=torch.contiguous_format) for k in names]
    total = torch.zeros(num_clients, dtype=dtype, device=w.device)
    if plain is None:
        return _train_general(vloss, update, names, params, shared, private, steps, active, total)
    rates = [plain.rate(k) for k in names]
    eps, decay = plain.precondition_eps, plain.weight_decay
    vtransform = vmap(lambda p, g: precondition_lora_grads(p, g, eps=eps)) if eps is not None else None
    for s in range(num_steps):
        batch = {k: v[s] for k, v in steps.items()}
        values, grads = _grads(vloss, names, params, shared, private, batch)
        if vtransform is not None:
            out = vtransform(dict(zip(names, params, strict=True)), dict(zip(names, grads, strict=True)))
            grads = [out[k] for k in names]
        mask = active[:, s]
        every = bool(mask.all())  # padding steps are rare: skip the per-client scale when there are none
        with torch.no_grad():
            for p, g, rate in zip(params, grads, rates, strict=True):
                if decay:
                    g = g + decay * p
                if not every:
                    g = g * mask.view(-1, *([1] * (p.dim() - 1)))
                p.add_(g, alpha=-rate)
            total += values.detach() * mask
    real_steps = active.sum(dim=1).clamp_min(1)
    return dict(zip(names, params, strict=True)), total / real_steps


def in_client_chunks(trainer: Callable, size: int) -> Callable:
    """``trainer`` run on at most ``size`` clients at a time (0: all at once), its outputs concatenated.

    Clients train independently, so chunking changes only how many share one stacked forward/backward.
    """
    if size <= 0:
        return trainer

    def chunked(trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
                batches: Batch) -> tuple[Params, Tensor]:
        num_clients = batches["w"].shape[0]
        if num_clients <= size:
            return trainer(trainable, shared, private, batches)
        parts = []
        for start in range(0, num_clients, size):
            part = slice(start, start + size)
            parts.append(trainer({k: v[part] for k, v in trainable.items()}, shared,
                                 {k: v[part] for k, v in private.items()},
                                 {k: v[part] for k, v in batches.items()}))
        return ({k: torch.cat([p[0][k] for p in parts]) for k in trainable},
                torch.cat([p[1] for p in parts]))

    return chunked


def _grads(vloss, names, params, shared, private, batch) -> tuple[Tensor, list[Tensor]]:
    """Every client's loss and gradient at one step (the gradient of the sum is each client's own)."""
    leaves = [p.requires_grad_(True) for p in params]
    with torch.enable_grad(), fast_linear():
        values = vloss(dict(zip(names, leaves, strict=True)), shared, private, batch)
        grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
    for p in params:
        p.requires_grad_(False)
    return values, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _train_general(vloss, update: LocalUpdate, names, params, shared, private, steps, active, total):
    """Any LocalUpdate: gradients by autograd, the update rule vmapped over clients (state kept per client)."""
    num_steps = active.shape[1]
    real = active.sum(dim=1)
    state = vmap(update.init)(dict(zip(names, params, strict=True)))
    for s in range(num_steps):
        batch = {k: v[s] for k, v in steps.items()}
        values, grads = _grads(vloss, names, params, shared, private, batch)

        def one(g, st, p, n, s=s):
            return update.update(g, st, p, StepInfo(s, n, shared))

        with torch.no_grad():
            current = dict(zip(names, params, strict=True))
            updates, new_state = vmap(one)(dict(zip(names, grads, strict=True)), state, current, real)
            mask = active[:, s]
            every = bool(mask.all())
            for k, p in current.items():
                u = updates[k]
                p.add_(u if every else u * mask.view(-1, *([1] * (p.dim() - 1))))
            state = new_state if every else _where_tree(mask, new_state, state)
            total += values.detach() * mask
    return dict(zip(names, params, strict=True)), total / real.clamp_min(1)


def _where_tree(mask: Tensor, new, old):
    """Per client: the new update state where the client took a step, the old one where it was padding."""
    if isinstance(new, dict):
        return {k: _where_tree(mask, v, old[k]) for k, v in new.items()}
    if isinstance(new, tuple):
        return tuple(_where_tree(mask, n, o) for n, o in zip(new, old, strict=True))
    return torch.where(mask.bool().view(-1, *([1] * (new.dim() - 1))), new, old)


def train_sequential(loss_fn: LossFn, update: LocalUpdate, trainable: Params,
                     shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
                     batches: Batch) -> tuple[Params, Tensor]:
    """The reference: clients one by one, steps one by one, padding rows removed."""
    step = make_step(loss_fn, update, list(trainable))
    num_clients = batches["w"].shape[0]
    real = (batches["w"].sum(dim=2) > 0).sum(dim=1)
    outs: list[Params] = []
    losses = []
    for k in range(num_clients):
        tr = {n: v[k] for n, v in trainable.items()}
        pv = {n: v[k] for n, v in private.items()}
        state = update.init(tr)
        total, count = 0.0, 0
        for s in range(batches["w"].shape[1]):
            keep = batches["w"][k, s] > 0
            if not bool(keep.any()):
                continue
            batch = {n: v[k, s][keep] for n, v in batches.items()}
            tr, value, state = step(tr, shared, pv, batch, StepInfo(s, real[k], shared), state)
            total, count = total + float(value), count + 1
        outs.append(tr)
        losses.append(total / max(count, 1))
    stacked = {n: torch.stack([o[n] for o in outs]) for n in trainable}
    return stacked, torch.tensor(losses, dtype=batches["x"].dtype)
