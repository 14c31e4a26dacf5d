"""Batched local SGD for conv chains: every client of a round in one forward, one backward, fused updates.

On CPU, ``vmap`` turns each client's convolution into a grouped convolution and a client loop pays
PyTorch's per-call costs C times per layer; both measured no faster than a PFLlib-style loop on FLoRAL's
CNN (benchmarks/RESULTS.md). This trainer runs a chain model (``conv_chain``) with the client dimension
kept explicit: the first conv, on the data, is one im2col + batched matmul for all clients (oneDNN's
1-channel 5x5 kernels and their weight gradient are slow); later convs run per client on
channels-last activations; ReLU and max-pool act on all clients at once (pool first: the same values
on fewer elements); dense layers are batched matmuls; the ConvLoRA mixtures fold into each client's
kernel. One ``autograd.grad`` per step gives every client's gradient (the gradient of the sum of
independent per-client losses), then preconditioning, weight decay and the SGD step run as
``torch._foreach_*`` ops over the stacked parameters.

Like ``mlp_kernels`` it implements one declared loss (``LossSpec``) and plain SGD, and the engine checks
its first steps against autograd on the algorithm's own loss before trusting it (``kernel_check``).
``ConvOptions`` names the measured alternatives (benchmarks/RESULTS.md records each one's ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters import MEMBERS, EnsembleModel, MixtureModel, mixture_weights, precondition_lora_grads
from ..adapters.functional import mixture_conv2d_kernel
from ..algorithms import LocalUpdate, LossSpec
from ..algorithms.contract import Batch, Params
from ..algorithms.local_update import PlainSGD
from ..algorithms.routing import ROUTER
from .batching import trailing_widths
from .chunk_threads import map_chunks, resolve_workers
from .conv_chain import FLATTEN, Conv, ConvLayer, Pool, parse_conv_chain
from .conv_columns import im2col_conv
from .mlp_chain import RELU, Dense

Trainer = Callable[[Params, Mapping[str, Tensor], Mapping[str, Tensor], Batch], tuple[Params, Tensor]]


@dataclass(frozen=True)
class ConvOptions:
    """How the trainer runs its layers; the defaults are the fastest measured on the 2-core CPU."""

    #: the first conv (on the data): "im2col" (one batched matmul) or "conv" (like the later convs)
    first: str = "im2col"
    #: the later convs: "loop" (one oneDNN conv per client), "grouped" (one conv with groups = clients) or
    #: "im2col" (patches and one batched matmul, like the first)
    convs: str = "loop"
    #: activations in channels-last memory (oneDNN's preferred layout)
    channels_last: bool = True
    #: max-pool before ReLU when a ReLU is followed by a pool (exact: both are monotone)
    pool_first: bool = True
    #: the SGD step as torch._foreach_* ops over all parameters (False: one op per tensor)
    foreach: bool = True
    #: clients trained together (5: their activations stay in cache on CPU); 0 = all clients at once
    chunk: int = 5
    #: chunks trained at once on worker threads sharing the intra-op threads (``chunk_threads``);
    #: 0 = one per intra-op thread on CPU, 1 = one chunk after another
    workers: int = 0


@dataclass(frozen=True)
class _Setup:
    layers: list[ConvLayer]
    task: str
    sgd: PlainSGD | None  # None: evaluation only
    logits: str | None
    temperature: float
    entropy: float
    options: ConvOptions
    members: tuple[str, ...] = ()  # an Ensemble's member prefixes (layer names are relative to a member)
    noise: float = 0.0  # training-time router noise: noise * U[0, 1) on the logits
    floor: float = 0.0  # pi clamped from below (no renormalisation)
    skip_below: float = 0.0  # an Ensemble's members with pi_c below it left out


def _setup(model: nn.Module, objective: str, plain: PlainSGD | None, spec: LossSpec | None,
           options: ConvOptions | None) -> _Setup | None:
    if spec is None or objective not in ("classification", "regression"):
        return None
    router = spec.router
    members: tuple[str, ...] = ()
    if isinstance(model, EnsembleModel):
        chains = [parse_conv_chain(m) for m in model.members]
        if router is None or chains[0] is None or any(c != chains[0] for c in chains) \
                or any(isinstance(la, Conv | Dense) and la.num for la in chains[0]):
            return None  # members must be the same plain chain, mixed by the router
        layers, members = chains[0], tuple(f"{MEMBERS}{c}." for c in range(len(chains)))
    elif isinstance(model, nn.Sequential | MixtureModel):
        layers = parse_conv_chain(model)
    else:
        return None
    if layers is None:
        return None
    mixed = [la for la in layers if isinstance(la, Conv | Dense) and la.num]
    if any(la.num > 1 for la in mixed) and router is None:
        return None
    return _Setup(layers, objective, plain, ROUTER if router is not None else None,
                  router.temperature if router else 1.0, router.entropy if router else 0.0, options or ConvOptions(),
                  members, router.noise if router else 0.0, router.floor if router else 0.0, spec.skip_below)


def conv_trainer(model: nn.Module, objective: str, update: LocalUpdate, spec: LossSpec | None,
                 options: ConvOptions | None = None) -> Trainer | None:
    """A trainer with ``train_vectorized``'s contract for a conv chain model, or None when it does not apply.

    ``spec`` declares the loss (pi from the router logits with noise, temperature, floor and skip, minus
    entropy * H, or pi = [1] without a router); ``update`` must be plain SGD (optionally with LoRA preconditioning).
    """
    plain = update.plain_sgd()
    setup = _setup(model, objective, plain, spec, options) if plain is not None else None
    if setup is None:
        return None

    def train(trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
              batches: Batch) -> tuple[Params, Tensor]:
        return _train(setup, trainable, shared, private, batches)

    return train


def conv_forward(model: nn.Module, objective: str, spec: LossSpec | None,
                 options: ConvOptions | None = None) -> Callable[[Params, Tensor], Tensor] | None:
    """The trainer's forward for evaluation: each client's parameters [K, ...] on its rows x [K, T, ...] give
    outputs [K, T, out] (pi from the router logits as in training); None when the kernels do not apply."""
    setup = _setup(model, objective, None, spec, options)
    if setup is None:
        return None

    def forward(params: Params, x: Tensor) -> Tensor:
        pi = _pi(setup, params[setup.logits], None) if setup.logits else None
        return _output(setup, params.__getitem__, pi, x)

    return forward


def _train(setup: _Setup, trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
           batches: Batch) -> tuple[Params, Tensor]:
    num_clients, num_steps = batches["w"].shape[:2]
    noise = None
    if setup.noise and setup.logits is not None:
        # one draw of [K, C] per step, all before the chunks run (in threads): vmap's draws, in its order
        logits = trainable[setup.logits] if setup.logits in trainable else private[setup.logits]
        noise = setup.noise * torch.stack([torch.rand(logits.shape, dtype=logits.dtype, device=logits.device)
                                           for _ in range(num_steps)], dim=1)  # [K, S, C]
    size = setup.options.chunk or num_clients
    if size >= num_clients:
        return _train_chunk(setup, trainable, shared, private, batches, noise)

    def chunk(start: int) -> tuple[Params, Tensor]:
        rows = slice(start, start + size)
        return _train_chunk(setup, {k: v[rows] for k, v in trainable.items()}, shared,
                            {k: v[rows] for k, v in private.items()}, {k: v[rows] for k, v in batches.items()},
                            None if noise is None else noise[rows])

    workers = resolve_workers(setup.options.workers, batches["w"].device)
    parts = map_chunks(chunk, range(0, num_clients, size), workers)
    return {k: torch.cat([p[0][k] for p in parts]) for k in trainable}, torch.cat([p[1] for p in parts])


def _train_chunk(setup: _Setup, trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
                 batches: Batch, noise: Tensor | None) -> tuple[Params, Tensor]:
    names = list(trainable)
    params = [trainable[k].detach().clone(memory_format=torch.contiguous_format) for k in names]
    w = batches["w"]
    num_clients, num_steps = w.shape[:2]
    dtype = params[0].dtype
    active = (w.sum(dim=2) > 0).to(dtype)  # [K, S]
    widths = trailing_widths(w)
    rates = [setup.sgd.rate(k) for k in names]
    total = torch.zeros(num_clients, dtype=dtype, device=w.device)
    for s in range(num_steps):
        if widths[s] == 0:
            continue  # no client has a real row: nothing changes
        batch = {k: v[:, s, :widths[s]] for k, v in batches.items()}
        mask = active[:, s]
        values, grads = _grads(setup, names, params, shared, private, batch, num_clients,
                               None if noise is None else noise[:, s])
        _sgd_step(setup, names, params, grads, rates, None if bool(mask.all()) else mask)
        total += values.detach() * mask
    return dict(zip(names, params, strict=True)), total / active.sum(dim=1).clamp_min(1)


def _grads(setup: _Setup, names: list[str], params: list[Tensor], shared, private, batch,
           num_clients: int, noise: Tensor | None) -> tuple[Tensor, list[Tensor]]:
    """Every client's loss and gradient at one step."""
    leaves = [p.requires_grad_(True) for p in params]
    try:
        with torch.enable_grad():
            own = dict(zip(names, leaves, strict=True))

            def lookup(name: str) -> Tensor:
                if name in own:
                    return own[name]
                if name in private:
                    return private[name]
                t = shared[name]
                return t.expand(num_clients, *t.shape)

            values = _loss(setup, lookup, batch, noise)
            grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(False)
    return values, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _sgd_step(setup: _Setup, names, params, grads, rates, mask: Tensor | None) -> None:
    """Preconditioning, weight decay, the padding mask and p -= lr * g, in place."""
    sgd = setup.sgd
    with torch.no_grad():
        if sgd.precondition_eps is not None:
            out = precondition_lora_grads(dict(zip(names, params, strict=True)), dict(zip(names, grads, strict=True)),
                                          eps=sgd.precondition_eps, batch_dims=1)
            grads = [out[k] for k in names]
        if not setup.options.foreach:
            for p, g, rate in zip(params, grads, rates, strict=True):
                if sgd.weight_decay:
                    g = g + sgd.weight_decay * p
                if mask is not None:
                    g = g * mask.view(-1, *([1] * (p.dim() - 1)))
                p.sub_(g, alpha=rate)
            return
        grads = [g.clone() if g.data_ptr() == p.data_ptr() else g for p, g in zip(params, grads, strict=True)]
        if sgd.weight_decay:
            torch._foreach_add_(grads, params, alpha=sgd.weight_decay)
        if mask is not None:
            torch._foreach_mul_(grads, [mask.view(-1, *([1] * (p.dim() - 1))) for p in params])
        torch._foreach_mul_(grads, rates)
        torch._foreach_sub_(params, grads)


def _pi(setup: _Setup, logits: Tensor, noise: Tensor | None) -> Tensor:
    """Mixture weights [K, C]: softmax((logits + noise) / T), clamped at the floor, members below the skip at 0."""
    pi = mixture_weights(logits if noise is None else logits + noise, floor=setup.floor,
                         temperature=setup.temperature)  # the noise drawn by the caller, for every client at once
    if setup.skip_below:
        pi = torch.where(pi < setup.skip_below, torch.zeros_like(pi), pi)
    return pi


def _loss(setup: _Setup, lookup: Callable[[str], Tensor], batch: Batch, noise: Tensor | None = None) -> Tensor:
    """Each client's declared loss on its batch, [K] (``noise`` [K, C]: this step's router noise)."""
    pi = None
    logits = None
    if setup.logits is not None:
        logits = lookup(setup.logits)
        pi = _pi(setup, logits, noise)
    out = _output(setup, lookup, pi, batch["x"])
    w = batch["w"].to(out.dtype)
    k, b = w.shape
    if setup.task == "classification":
        per = F.cross_entropy(out.reshape(k * b, -1), batch["y"].reshape(-1), reduction="none").view(k, b)
    else:
        diff = out - batch["y"].to(out.dtype).reshape(out.shape)
        per = (diff * diff).reshape(k, b, -1).mean(dim=-1)
    value = (per * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
    if setup.entropy:
        clean = torch.softmax(logits / setup.temperature, dim=-1)
        value = value + setup.entropy * (clean * torch.log(clean.clamp_min(1e-30))).sum(dim=-1)
    return value


def _output(setup: _Setup, lookup, pi: Tensor | None, x: Tensor) -> Tensor:
    """The model's outputs [K, B, out]: the chain, or an Ensemble's pi-weighted sum of its members' chains.

    Members with pi_c = 0 for every client of the chunk (skipped, or the oracle's) do not run. When each
    client has one member left (the optimal router, or a router whose other members fall below the skip),
    that member's parameters are gathered per client and the chain runs once: pi_c f_c(x), the same
    outputs and gradients at one member's cost instead of C members'.
    """
    if not setup.members:
        return _forward(setup, lookup, pi, x)
    k = x.shape[0]
    used = pi != 0
    if bool((used.sum(dim=-1) == 1).all()):
        chosen = used.to(pi.dtype)

        def gathered(name: str) -> Tensor:
            stacked = torch.stack([lookup(p + name) for p in setup.members], dim=1)  # [K, C, ...]
            return (chosen.view(k, -1, *([1] * (stacked.dim() - 2))) * stacked).sum(dim=1)

        return pi.sum(dim=-1)[:, None, None] * _forward(setup, gathered, None, x)
    return sum(pi[:, c, None, None] * _forward(setup, lambda name, p=p: lookup(p + name), None, x)
               for c, p in enumerate(setup.members) if bool(used[:, c].any()))


def _forward(setup: _Setup, lookup, pi: Tensor | None, x: Tensor) -> Tensor:
    """The chain on every client's batch x [K, B, ...]: outputs [K, B, out]."""
    opts, layers = setup.options, setup.layers
    k, b = x.shape[:2]
    h, data = x, True
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, Conv):
            weight, bias = _conv_params(layer, lookup, pi, k)
            if data and opts.first == "im2col" or not data and opts.convs == "im2col":
                h = im2col_conv(h if data else h.view(k, b, *h.shape[1:]), weight, bias, layer.stride,
                                layer.padding, layer.dilation)
            else:
                if data:
                    h = h.reshape(k * b, *h.shape[2:])
                    if opts.channels_last:
                        h = h.contiguous(memory_format=torch.channels_last)
                h = _conv(h, weight, bias, layer, k, opts.convs)
            data = False
        elif layer == RELU and opts.pool_first and i + 1 < len(layers) and isinstance(layers[i + 1], Pool):
            h = torch.relu(F.max_pool2d(h, layers[i + 1].size))
            i += 1
        elif layer == RELU:
            h = torch.relu(h)
        elif isinstance(layer, Pool):
            h = F.max_pool2d(h, layer.size)
        elif layer == FLATTEN:
            h = h.reshape(k, b, -1)
        else:
            h = _dense(layer, lookup, pi, h)
        i += 1
    return h


def _mixed_bias(bias: Tensor | None, lora_bias: Tensor | None, pi: Tensor, alpha: float) -> Tensor | None:
    if lora_bias is None:
        return bias
    extra = alpha * torch.bmm(pi[:, None, :], lora_bias)[:, 0]
    return extra if bias is None else bias + extra


def _mix(pi: Tensor | None, layer: Conv | Dense, k: int, like: Tensor) -> Tensor:
    return pi if pi is not None else torch.ones(k, layer.num, dtype=like.dtype, device=like.device)


def _conv_params(layer: Conv, lookup, pi: Tensor | None, k: int) -> tuple[Tensor, Tensor | None]:
    """Each client's kernel [K, out, in, kh, kw] with its ConvLoRA mixture folded in, and its bias [K, out]."""
    weight = lookup(layer.weight)
    bias = lookup(layer.bias) if layer.bias else None
    if not layer.num:
        return weight, bias
    mix = _mix(pi, layer, k, weight)
    weight = weight + layer.alpha * mixture_conv2d_kernel(lookup(layer.lora_A), lookup(layer.lora_B), mix)
    lora_bias = lookup(layer.lora_bias) if layer.lora_bias else None
    return weight, _mixed_bias(bias, lora_bias, mix, layer.alpha)


def _conv(h: Tensor, weight: Tensor, bias: Tensor | None, layer: Conv, k: int, how: str) -> Tensor:
    """Conv of activations h [K*B, C, H, W] with each client's kernel: a loop of convs or one grouped conv."""
    opts = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
    per = h.view(k, h.shape[0] // k, *h.shape[1:])
    if how == "loop":
        # unbind, not indexing: its backward stacks the K gradients instead of K full-size zero fills
        biases = [None] * k if bias is None else bias.unbind(0)
        return torch.cat([F.conv2d(x, wt, bt, **opts) for x, wt, bt in zip(per.unbind(0), weight.unbind(0), biases,
                                                                          strict=True)])
    b, c = per.shape[1:3]
    grouped = per.transpose(0, 1).reshape(b, k * c, *per.shape[3:])
    out = F.conv2d(grouped, weight.flatten(0, 1), None if bias is None else bias.flatten(), groups=k, **opts)
    return out.view(b, k, -1, *out.shape[2:]).transpose(0, 1).reshape(k * b, -1, *out.shape[2:])


def _dense(layer: Dense, lookup, pi: Tensor | None, h: Tensor) -> Tensor:
    """z = h W^T + b + alpha * sum_c pi_c (h A_c^T B_c^T + b_c) for every client, h [K, B, in]."""
    weight = lookup(layer.weight)
    bias = lookup(layer.bias) if layer.bias else None
    k = h.shape[0]
    if layer.num:
        mix = _mix(pi, layer, k, h)
        bias = _mixed_bias(bias, lookup(layer.lora_bias) if layer.lora_bias else None, mix, layer.alpha)
    z = torch.bmm(h, weight.mT) if bias is None else torch.baddbmm(bias[:, None, :], h, weight.mT)
    if layer.num:
        a, bm = lookup(layer.lora_A), lookup(layer.lora_B)  # [K, C, r, in], [K, C, out, r]
        a_cat = a.reshape(k, layer.num * layer.rank, a.shape[-1])
        b_cat = bm.permute(0, 2, 1, 3).reshape(k, bm.shape[2], layer.num * layer.rank)
        scale = mix.repeat_interleave(layer.rank, dim=1)[:, None, :]
        z = z + layer.alpha * torch.bmm(torch.bmm(h, a_cat.mT) * scale, b_cat.mT)
    return z
