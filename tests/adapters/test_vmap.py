"""Vectorised clients: vmap(functional_call) and vmap(grad) over stacked params equal a per-client loop."""

import copy

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from bouquet.adapters import inject, param_role, precondition_lora_grads

K = 3


def make_clients():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3)
    )
    proto = inject(net, num_adaptors=2, rank=2, adaptor_bias=True)
    clients = []
    for _ in range(K):
        m = copy.deepcopy(proto)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if param_role(name) != "base":
                    p.normal_(std=0.3)
        clients.append(m)
    return proto, clients


def split(clients):
    """Stack adaptor + router params per client (in_dims 0); share the base (in_dims None)."""
    stacked, _ = stack_module_state(clients)
    private = {k: v for k, v in stacked.items() if param_role(k) != "base"}
    shared = {k: v for k, v in clients[0].named_parameters() if param_role(k) == "base"}
    return private, shared


def loss_fn(model, private, shared, x, y):
    out = functional_call(model, {**shared, **private}, (x,))
    return nn.functional.cross_entropy(out, y)


def test_vmap_forward_equals_loop():
    proto, clients = make_clients()
    private, shared = split(clients)
    x = torch.randn(K, 5, 2, 6, 6)
    meta = copy.deepcopy(proto).to("meta")

    def fwd(priv, xb):
        return functional_call(meta, {**shared, **priv}, (xb,))

    batched = vmap(fwd, in_dims=(0, 0))(private, x)
    looped = torch.stack([clients[k](x[k]) for k in range(K)])
    torch.testing.assert_close(batched, looped)
    # Shared input (in_dims None) too.
    batched_shared = vmap(fwd, in_dims=(0, None))(private, x[0])
    torch.testing.assert_close(batched_shared, torch.stack([c(x[0]) for c in clients]))


def test_vmap_grad_and_preconditioning_equal_loop():
    proto, clients = make_clients()
    private, shared = split(clients)
    x, y = torch.randn(K, 5, 2, 6, 6), torch.randint(0, 3, (K, 5))

    def step(priv, xb, yb):
        g = grad(lambda p: loss_fn(proto, p, shared, xb, yb))(priv)
        return precondition_lora_grads(priv, g)

    batched = vmap(step)(private, x, y)
    assert set(batched) == set(private)
    for k, client in enumerate(clients):
        own = {n: p for n, p in client.named_parameters() if param_role(n) != "base"}
        g = grad(lambda p, k=k: loss_fn(proto, p, shared, x[k], y[k]))(own)
        ref = precondition_lora_grads(own, g)
        for name in ref:
            torch.testing.assert_close(batched[name][k], ref[name], atol=1e-5, rtol=1e-4)
    # Outside vmap, stacked dicts are preconditioned with batch_dims=1 to the same result.
    raw = vmap(lambda p, xb, yb: grad(lambda q: loss_fn(proto, q, shared, xb, yb))(p))(private, x, y)
    stacked_pre = precondition_lora_grads(private, raw, batch_dims=1)
    for name in batched:
        torch.testing.assert_close(stacked_pre[name], batched[name], atol=1e-5, rtol=1e-4)


def test_vmap_with_external_pi():
    proto, clients = make_clients()
    private, shared = split(clients)
    pis = torch.softmax(torch.randn(K, 2), -1)
    x = torch.randn(4, 2, 6, 6)
    out = vmap(lambda p, pi: functional_call(proto, {**shared, **p}, (x,), {"pi": pi}))(private, pis)
    for k, client in enumerate(clients):
        torch.testing.assert_close(out[k], client(x, pi=pis[k]))
