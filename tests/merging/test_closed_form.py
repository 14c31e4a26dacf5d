"""Closed-form lambda against a grid search on a quadratic with known variances; exact delta-W merging."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from bouquet.algorithms.lora import lora_model
from bouquet.merging.closed_form import (
    bias_from_distance,
    expected_quadratic_loss,
    lora_layers,
    merge_delta_w,
    mixing_weight,
)


def _quadratic_case(seed: int, bias_scale: float):
    """Diagonal Hessian H, tau_F ~ N(tau* + b, S_F), tau_L ~ N(tau*, S_L); loss (tau - tau*)^T H (tau - tau*) / 2."""
    g = torch.Generator().manual_seed(seed)
    d = 2000
    h = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.1
    var_f = torch.rand(d, generator=g, dtype=torch.float64) * 0.5
    var_l = torch.rand(d, generator=g, dtype=torch.float64) * 2.0
    b = bias_scale * torch.randn(d, generator=g, dtype=torch.float64)
    draws = 4000
    tau_f = b + var_f.sqrt() * torch.randn(draws, d, generator=g, dtype=torch.float64)
    tau_l = var_l.sqrt() * torch.randn(draws, d, generator=g, dtype=torch.float64)
    return h, var_f, var_l, b, tau_f, tau_l


@pytest.mark.parametrize("bias_scale", [0.0, 0.5])
def test_closed_form_lambda_matches_grid_search_on_quadratic(bias_scale):
    h, var_f, var_l, b, tau_f, tau_l = _quadratic_case(0, bias_scale)
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    # Monte-Carlo expected loss of lam tau_F + (1 - lam) tau_L for every lam of the grid, from the three
    # sample moments it depends on (the same numbers as averaging the loss of every merged draw)
    ff, ll, fl = ((tau_f**2) * h).sum(1).mean(), ((tau_l**2) * h).sum(1).mean(), ((tau_f * tau_l) * h).sum(1).mean()
    losses = 0.5 * (grid**2 * ff + 2 * grid * (1 - grid) * fl + (1 - grid) ** 2 * ll)
    lam_grid = float(grid[losses.argmin()])
    # curvature-weighted traces tr(H Sigma) and bias b^T H b, known exactly here
    lam = float(mixing_weight((h * var_l).sum(), (h * var_f).sum(), (h * b * b).sum()))
    assert abs(lam - lam_grid) <= 0.05
    # the merged bound is tighter than both endpoints
    tr_f, tr_l, bb = (h * var_f).sum(), (h * var_l).sum(), (h * b * b).sum()
    at = expected_quadratic_loss(torch.tensor(lam, dtype=torch.float64), tr_f, tr_l, bb)
    assert at < expected_quadratic_loss(torch.tensor(1.0, dtype=torch.float64), tr_f, tr_l, bb)
    assert at < expected_quadratic_loss(torch.tensor(0.0, dtype=torch.float64), tr_f, tr_l, bb)


def test_bias_estimate_from_distance_recovers_bias_on_average():
    h, var_f, var_l, b, tau_f, tau_l = _quadratic_case(1, 0.5)
    dist2 = ((tau_f - tau_l) ** 2).sum(1)
    est = bias_from_distance(dist2, var_f.sum(), var_l.sum()).mean()
    assert est == pytest.approx(float((b * b).sum()), rel=0.05)


def test_mixing_weight_edge_cases_and_per_layer_vectors():
    assert float(mixing_weight(torch.tensor(0.0), torch.tensor(0.0))) == 0.5
    assert float(mixing_weight(torch.tensor(0.0), torch.tensor(1.0))) == 0.0
    assert float(mixing_weight(torch.tensor(3.0), torch.tensor(1.0))) == pytest.approx(0.75)
    assert float(mixing_weight(torch.tensor(3.0), torch.tensor(1.0), 2.0)) == pytest.approx(0.5)
    lam = mixing_weight(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(lam, torch.tensor([0.5, 0.0, 1.0]))


def _two_loras(seed=0):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    template, init = lora_model(base, rank=2)
    fed = {k: torch.randn_like(v) for k, v in init.items()}
    loc = {k: torch.randn_like(v) for k, v in init.items()}
    return template, fed, loc


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_merged_layer_output_is_the_lambda_mix_of_the_two_outputs(lam):
    template, fed, loc = _two_loras()
    layer = template.model[0]  # the first MixtureLinear
    x = torch.randn(11, 7)
    pick = lambda p: {k.removeprefix("model.0."): v for k, v in p.items() if k.startswith("model.0.")}  # noqa: E731
    merged = merge_delta_w(fed, loc, torch.tensor(lam))
    out_m = functional_call(layer, pick(merged), (x,), strict=False)
    out_f = functional_call(layer, pick(fed), (x,), strict=False)
    out_l = functional_call(layer, pick(loc), (x,), strict=False)
    assert torch.allclose(out_m, lam * out_f + (1 - lam) * out_l, atol=1e-5)
    # the merged rank is r_F + r_L and B/A were not averaged separately
    assert merged["model.0.lora_A"].shape[1] == 4


def test_averaging_factors_is_not_the_delta_w_merge():
    template, fed, loc = _two_loras(1)
    naive = {k: 0.5 * fed[k] + 0.5 * loc[k] for k in fed}
    merged = merge_delta_w(fed, loc, torch.tensor(0.5))
    x = torch.randn(4, 7)
    layer = template.model[0]
    pick = lambda p: {k.removeprefix("model.0."): v for k, v in p.items() if k.startswith("model.0.")}  # noqa: E731
    assert not torch.allclose(functional_call(layer, pick(naive), (x,), strict=False),
                              functional_call(layer, pick(merged), (x,), strict=False), atol=1e-3)


def test_per_layer_lambda_and_vmap_over_clients():
    template, fed, loc = _two_loras(2)
    layers = lora_layers(fed)
    assert layers == ["model.0", "model.2"]
    lam = torch.tensor([[0.2, 0.9], [1.0, 0.0]])  # two clients, one weight per layer
    stacked_loc = {k: torch.stack([v, 2 * v]) for k, v in loc.items()}
    merged = vmap(lambda lc, lm: merge_delta_w(fed, lc, lm))(stacked_loc, lam)
    layer = template.model[2]
    h = torch.randn(3, 5)
    for c in range(2):
        pick = lambda p, c=c: {k.removeprefix("model.2."): (v[c] if v.dim() == 4 else v)  # noqa: E731
                               for k, v in p.items() if k.startswith("model.2.")}
        loc_c = {k: v[c] for k, v in stacked_loc.items()}
        out_m = functional_call(layer, pick(merged), (h,), strict=False)
        out_f = functional_call(layer, {k.removeprefix("model.2."): v for k, v in fed.items()
                                        if k.startswith("model.2.")}, (h,), strict=False)
        out_l = functional_call(layer, {k.removeprefix("model.2."): v for k, v in loc_c.items()
                                        if k.startswith("model.2.")}, (h,), strict=False)
        w = float(lam[c, 1])
        assert torch.allclose(out_m, w * out_f + (1 - w) * out_l, atol=1e-5)
