"""Delta-W merging: rank-stacked merge output equals the lam-interpolation of the two models' outputs."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bouquet.adapters import (
    CONV_VARIANTS,
    MixtureConv2d,
    MixtureLinear,
    inject,
    load_merged,
    lora_delta_weight,
    merge_lora_models,
    param_role,
)


def randomized(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if param_role(name) == "adaptor":
                p.normal_(std=0.5)
    return model


def pair(net, variant="balanced_2d"):
    kw = {"num_adaptors": 1, "adaptor_bias": True, "conv_variant": variant}
    return randomized(inject(net, rank=2, **kw), 1), randomized(inject(net, rank=3, **kw), 2)


def check_merge(net, x, lam, variant="balanced_2d"):
    fed, loc = pair(net, variant)
    sd_f, sd_l = dict(fed.named_parameters()), dict(loc.named_parameters())
    merged = merge_lora_models(sd_f, sd_l, lam)
    a_names = [n for n in merged if n.endswith("lora_A")]
    assert all(merged[n].shape[1] == 5 for n in a_names)  # rank r_F + r_L
    expected = {}
    for name in a_names:
        layer = name[: -len(".lora_A")]
        w = lam[layer] if isinstance(lam, dict) else lam
        expected[layer] = w
    out = functional_call(fed, merged, (x,))
    if isinstance(lam, dict):
        return out, fed, loc
    torch.testing.assert_close(out, lam * fed(x) + (1 - lam) * loc(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(load_merged(fed, merged)(x), out)
    return out, fed, loc


def test_merge_linear_layer_exact():
    net = nn.Linear(6, 4)
    check_merge(net, torch.randn(8, 6), 0.3)


@pytest.mark.parametrize("variant", CONV_VARIANTS)
def test_merge_conv_layer_exact(variant):
    net = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    check_merge(net, torch.randn(2, 3, 9, 9), 0.7, variant)


def test_merge_per_layer_lambda_in_a_network():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    x = torch.randn(2, 2, 6, 6)
    lam = {"model.0": 0.2, "model.2": 0.9}
    out, fed, loc = check_merge(net, x, lam)
    # Layer by layer: each merged layer's output is its own lam-interpolation.
    fed_conv, loc_conv = fed.model[0], loc.model[0]
    merged = merge_lora_models(dict(fed.named_parameters()), dict(loc.named_parameters()), lam)
    m = load_merged(fed, merged)
    torch.testing.assert_close(m.model[0](x), 0.2 * fed_conv(x) + 0.8 * loc_conv(x), atol=1e-5, rtol=1e-5)
    h = torch.randn(2, 48)
    torch.testing.assert_close(m.model[2](h), 0.9 * fed.model[2](h) + 0.1 * loc.model[2](h),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, m(x))


def test_delta_weight_matches_layer():
    torch.manual_seed(0)
    lin = randomized(MixtureLinear(nn.Linear(5, 4), 1, 2, alpha=0.5), 0)
    x = torch.randn(3, 5)
    torch.testing.assert_close(lin(x) - lin.base(x), x @ lora_delta_weight(lin).T)
    torch.testing.assert_close(lora_delta_weight((lin.lora_A[0], lin.lora_B[0])), 2 * lora_delta_weight(lin))
    for variant in CONV_VARIANTS:
        base = nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        conv = randomized(MixtureConv2d(base, 1, 2, variant=variant), 0)
        x = torch.randn(2, 3, 10, 12)
        dense = nn.functional.conv2d(x, lora_delta_weight(conv), None, base.stride, base.padding, base.dilation)
        torch.testing.assert_close(conv(x) - base(x), dense, atol=1e-5, rtol=1e-5)


def test_merge_rejects_mixtures():
    net = nn.Linear(3, 2)
    a = inject(net, num_adaptors=2, rank=1)
    with pytest.raises(ValueError, match="C = 1"):
        merge_lora_models(dict(a.named_parameters()), dict(a.named_parameters()), 0.5)
