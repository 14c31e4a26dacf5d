"""The local-update transforms: plain-SGD recognition, FedProx's proximal gradient, FedRep's phases, the step clip."""

import torch
from torch.func import grad

from bouquet.algorithms.local_update import (
    StepInfo,
    alternate,
    chain,
    clip_norm,
    local_sgd,
    precondition_lora,
    proximal,
    sgd,
    weight_decay,
)


def _params():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 2, generator=g), "b": torch.randn(3, generator=g)}


def test_plain_sgd_is_recognised_only_for_plain_chains():
    plain = local_sgd(0.1, weight_decay_rate=0.01, precondition_eps=1e-5).plain_sgd()
    assert plain is not None and plain.weight_decay == 0.01 and plain.precondition_eps == 1e-5
    assert plain.rate("anything") == 0.1
    assert local_sgd(0.1).plain_sgd().precondition_eps is None
    assert local_sgd(0.1, extra=(proximal(0.1),)).plain_sgd() is None
    assert chain(weight_decay(0.1), precondition_lora(1e-5), sgd(0.1)).plain_sgd() is None  # wrong order
    assert chain(precondition_lora(1e-5)).plain_sgd() is None  # no final sgd


def test_sgd_update_with_rates_per_name():
    update = local_sgd(0.1, lr_of=lambda k: 0.5 if k == "b" else 0.1, weight_decay_rate=0.2)
    p = _params()
    g = {k: torch.ones_like(v) for k, v in p.items()}
    upd, _ = update.update(g, update.init(p), p, StepInfo(0, torch.tensor(3), {}))
    torch.testing.assert_close(upd["w"], -0.1 * (1 + 0.2 * p["w"]))
    torch.testing.assert_close(upd["b"], -0.5 * (1 + 0.2 * p["b"]))


def test_proximal_term_is_the_gradient_of_mu_half_squared_distance():
    p, anchor = _params(), {k: v + 1.0 for k, v in _params().items()}
    mu = 0.3
    expected = grad(lambda q: 0.5 * mu * sum(((q[k] - anchor[k]) ** 2).sum() for k in q))(p)
    zero = {k: torch.zeros_like(v) for k, v in p.items()}
    out, _ = proximal(mu).update(zero, {}, p, StepInfo(1, torch.tensor(3), anchor))
    for k in p:
        torch.testing.assert_close(out[k], expected[k])
    # a tensor that was not downloaded (a private one) has no anchor: unchanged
    info = StepInfo(0, torch.tensor(3), {})
    out, _ = proximal(mu).update({"head": torch.ones(2)}, {}, {"head": torch.zeros(2)}, info)
    assert torch.equal(out["head"], torch.ones(2))


def test_alternate_moves_the_head_first_then_the_body():
    stage = alternate(lambda k: k == "b", 0.5)
    g = {k: torch.ones_like(v) for k, v in _params().items()}
    steps = torch.tensor(4)
    moved = []
    for s in range(4):
        out, _ = stage.update(g, {}, _params(), StepInfo(s, steps, {}))
        moved.append(tuple(k for k in ("w", "b") if bool(out[k].abs().sum() > 0)))
    assert moved == [("b",), ("b",), ("w",), ("w",)]
    # an odd count rounds the head's share up: 3 real steps -> 2 head steps, 1 body step
    out, _ = stage.update(g, {}, _params(), StepInfo(1, torch.tensor(3), {}))
    assert bool(out["w"].abs().sum() == 0) and bool(out["b"].abs().sum() > 0)


def test_weight_decay_exempts_named_prefixes_and_leaves_the_fused_path():
    update = local_sgd(0.1, weight_decay_rate=0.5, decay_exempt=("router.",))
    assert update.plain_sgd() is None  # the fused paths decay everything: exemptions take the general path
    p = {"w": torch.ones(2), "router.logits": torch.full((3,), 2.0)}
    g = {k: torch.zeros_like(v) for k, v in p.items()}
    upd, _ = update.update(g, update.init(p), p, StepInfo(0, torch.tensor(1), {}))
    torch.testing.assert_close(upd["w"], -0.1 * 0.5 * p["w"])
    assert not upd["router.logits"].any()
    assert local_sgd(0.1, decay_exempt=("router.",)).plain_sgd() is not None  # no decay: nothing to exempt


def test_clip_norm_caps_the_global_step_and_leaves_small_steps_alone():
    p = _params()
    big = {"w": torch.full((3, 2), 3.0), "b": torch.full((3,), 4.0)}  # global norm sqrt(6*9 + 3*16) = sqrt(102)
    info = StepInfo(0, torch.tensor(3), {})
    out, _ = clip_norm(2.0).update(big, (), p, info)
    total = torch.sqrt(sum((v ** 2).sum() for v in out.values()))
    torch.testing.assert_close(total, torch.tensor(2.0))
    for k in big:  # one scale for every tensor: the direction is kept
        torch.testing.assert_close(out[k], big[k] * (2.0 / 102 ** 0.5))
    small = {k: 0.01 * v for k, v in big.items()}
    kept, _ = clip_norm(2.0).update(small, (), p, info)
    for k in small:
        torch.testing.assert_close(kept[k], small[k])
    chained = local_sgd(0.5, max_norm=2.0)
    assert chained.plain_sgd() is None  # the fused paths have no clip: the general path runs it
    upd, _ = chained.update(big, chained.init(p), p, info)
    torch.testing.assert_close(upd["w"], -0.5 * out["w"])


def test_clip_norm_is_per_client_under_vmap():
    grads = {"w": torch.stack([torch.full((3, 2), 10.0), torch.full((3, 2), 0.01)])}
    params = {"w": torch.zeros(2, 3, 2)}
    out, _ = torch.vmap(lambda g, p: clip_norm(1.0).update(g, (), p, None))(grads, params)
    torch.testing.assert_close(out["w"][0].norm(), torch.tensor(1.0))
    torch.testing.assert_close(out["w"][1], grads["w"][1])
