"""The fast vectorized trainer: FastLinear is F.linear, and train_vectorized equals the client loop."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from bouquet.algorithms import RouterConfig
from bouquet.algorithms.fedavg import fedavg
from bouquet.algorithms.floral import floral, wrap
from bouquet.engine.autograd_training import train_sequential, train_vectorized
from bouquet.engine.fast_linear import FastLinear, fast_linear
from bouquet.models import build_model


def test_fast_linear_values_and_grads_match_linear():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 7, generator=gen, requires_grad=True)
    w = torch.randn(4, 7, generator=gen, requires_grad=True)
    b = torch.randn(4, generator=gen, requires_grad=True)
    ref = F.linear(x, w, b)
    out = FastLinear.apply(x, w, b)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    grads = torch.autograd.grad(out, (x, w, b), g)
    for a, e in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, e)


def test_fast_linear_under_vmap_and_grad_with_per_client_weights():
    """Per-client weights under vmap(grad(...)) and grad-of-vmap agree with plain F.linear; no bias works."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 5, generator=gen)
    w = torch.randn(3, 2, 5, generator=gen)

    def loss(weight, inputs):
        return (F.linear(inputs, weight) ** 2).sum()

    ref = vmap(grad(loss))(w, x)
    with fast_linear():
        got = vmap(grad(loss))(w, x)
        leaf = w.clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(vmap(loss)(leaf, x).sum(), leaf)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g2, ref)
    assert g2.is_contiguous()
    leaf = w[0].clone().requires_grad_(True)
    with fast_linear():
        assert "FastLinear" in type(F.linear(x[0], leaf).grad_fn).__name__
    assert "FastLinear" not in type(F.linear(x[0], leaf).grad_fn).__name__  # the mode ends with its block


def _floral(data, **kw):
    torch.manual_seed(0)
    model = wrap(build_model("mlp", data.input_shape, data.num_outputs, hidden=16), 3, 2, adaptor_bias=True)
    return floral(model, data.objective, lr=0.1, router=RouterConfig(lr=0.5), **kw)


def _fedavg(data, **kw):
    torch.manual_seed(0)
    return fedavg(build_model("mlp", data.input_shape, data.num_outputs, hidden=16), data.objective, lr=0.1, **kw)


@pytest.mark.parametrize("build", [_floral, _fedavg])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_vectorized_equals_sequential(padded_digits, first_round, build, weight_decay):
    """Batched autograd, in-place updates and padding steps give the client loop's parameters and losses."""
    alg = build(padded_digits, weight_decay=weight_decay)
    trainable, payload, private, batches = first_round(padded_digits, alg)
    steps = (batches["w"].sum(dim=2) > 0).sum(dim=1)
    assert steps.min() < steps.max()  # some clients really have padding steps
    got, got_loss = train_vectorized(alg.loss, alg.local_update, trainable, payload, private, batches)
    ref, ref_loss = train_sequential(alg.loss, alg.local_update, trainable, payload, private, batches)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)
        assert not torch.equal(got[k], trainable[k]) or k.endswith("lora_B")  # training moved the parameters
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-6)


def test_vectorized_leaves_inputs_untouched(padded_digits, first_round):
    """In-place updates act on the trainer's own buffers, never on the caller's tensors."""
    alg = _floral(padded_digits)
    trainable, payload, private, batches = first_round(padded_digits, alg, steps=3)
    before = {k: v.clone() for k, v in trainable.items()}
    payload_before = {k: v.clone() for k, v in payload.items()}
    train_vectorized(alg.loss, alg.local_update, trainable, payload, private, batches)
    for k in before:
        assert torch.equal(trainable[k], before[k])
    for k in payload_before:
        assert torch.equal(payload[k], payload_before[k])
