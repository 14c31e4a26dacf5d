"""Mixture layers: shapes, init equals base, one-hot pi, linearity in pi, ConvLoRA variants, norms."""

import pytest
import torch
from torch import nn

from bouquet.adapters import (
    CONV_VARIANTS,
    MixtureContext,
    MixtureConv2d,
    MixtureLinear,
    MixtureNorm,
    Router,
    mixture_weights,
)


def randomize_(layer):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("lora_"):
                p.normal_()
    return layer


def test_linear_shapes_and_init_equals_base():
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    layer = MixtureLinear(base, num_adaptors=3, rank=2, adaptor_bias=True)
    assert layer.lora_A.shape == (3, 2, 7)
    assert layer.lora_B.shape == (3, 5, 2)
    assert layer.lora_bias.shape == (3, 5)
    bound = (6 / 7) ** 0.5
    assert layer.lora_A.abs().max() <= bound
    assert torch.all(layer.lora_B == 0) and torch.all(layer.lora_bias == 0)
    x = torch.randn(4, 7)
    with layer.context.use(torch.full((3,), 1 / 3)):
        assert torch.equal(layer(x), base(x))
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"base.weight", "base.bias", "lora_A", "lora_B", "lora_bias"}


def test_uniform_bias_init_is_the_paper_switch():
    layer = MixtureLinear(nn.Linear(7, 5), num_adaptors=2, rank=1, adaptor_bias=True, init_bias="uniform")
    assert layer.lora_bias.abs().max() <= 1.0 and layer.lora_bias.abs().sum() > 0


def test_linear_one_hot_and_linearity():
    torch.manual_seed(0)
    layer = randomize_(MixtureLinear(nn.Linear(6, 4), num_adaptors=3, rank=2, alpha=0.5, adaptor_bias=True))
    x = torch.randn(5, 6)
    base = layer.base(x)
    for c in range(3):
        pi = torch.nn.functional.one_hot(torch.tensor(c), 3).float()
        with layer.context.use(pi):
            out = layer(x)
        manual = base + 0.5 * (x @ layer.lora_A[c].T @ layer.lora_B[c].T + layer.lora_bias[c])
        torch.testing.assert_close(out, manual)
    p1, p2 = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.7, 0.1, 0.2])
    with layer.context.use(p1):
        d1 = layer(x) - base
    with layer.context.use(p2):
        d2 = layer(x) - base
    with layer.context.use(0.3 * p1 + 0.7 * p2):
        d12 = layer(x) - base
    torch.testing.assert_close(d12, 0.3 * d1 + 0.7 * d2)


def test_single_adaptor_runs_without_context_but_mixture_needs_pi():
    single = MixtureLinear(nn.Linear(3, 2), num_adaptors=1, rank=1)
    assert single(torch.randn(2, 3)).shape == (2, 2)
    multi = MixtureLinear(nn.Linear(3, 2), num_adaptors=2, rank=1)
    with pytest.raises(RuntimeError, match="no mixture weights"):
        multi(torch.randn(2, 3))
    with pytest.raises(ValueError, match="shape"), multi.context.use(torch.ones(3)):
        multi(torch.randn(2, 3))


@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_conv_variants_shape_and_init(variant, kernel, stride, padding):
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding)
    layer = MixtureConv2d(base, num_adaptors=2, rank=2, variant=variant, adaptor_bias=True)
    x = torch.randn(2, 4, 11, 13)
    with layer.context.use(torch.tensor([0.4, 0.6])):
        out = layer(x)
        assert torch.equal(out, base(x))  # B = 0 and bias = 0 at init
        randomize_(layer)
        assert layer(x).shape == base(x).shape


def test_conv_variant_kernels():
    k = (3, 5)
    cases = {"balanced_2d": ((1, 5), (3, 1)), "in": (k, (1, 1)), "out": ((1, 1), k)}
    for variant, (ka, kb) in cases.items():
        layer = MixtureConv2d(nn.Conv2d(4, 8, k), num_adaptors=3, rank=2, variant=variant)
        assert layer.lora_A.shape == (3, 2, 4, *ka) and layer.lora_B.shape == (3, 8, 2, *kb)
    # balanced: full kernel on the side with fewer channels.
    assert MixtureConv2d(nn.Conv2d(4, 8, 3), 1, 2, variant="balanced").lora_A.shape[-2:] == (3, 3)
    assert MixtureConv2d(nn.Conv2d(8, 4, 3), 1, 2, variant="balanced").lora_B.shape[-2:] == (3, 3)
    # rho on 32 -> 64, 3x3, balanced_2d: 0.1 * 96 * 192 / 288 = 6.4 -> 6; with the official bug 4.
    assert MixtureConv2d(nn.Conv2d(32, 64, 3), 1, 0.1).rank == 6
    assert MixtureConv2d(nn.Conv2d(32, 64, 3), 1, 0.1, paper_conv_rank_bug=True).rank == 4


CONV_GEOMETRIES = [  # (kernel, stride, padding, dilation)
    (3, 2, 1, 1),
    ((3, 5), 1, 0, 1),
    ((5, 3), (2, 1), (2, 1), 1),
    ((3, 5), 1, "same", (2, 1)),
    (3, 1, "valid", 2),
]


@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv_folded_kernel_equals_conv_pair_loop(variant, geometry):
    """The layer folds the C ConvLoRAs into one kernel; output and gradients equal the per-adaptor conv pairs."""
    kernel, stride, padding, dilation = geometry
    torch.manual_seed(0)
    base = nn.Conv2d(3, 5, kernel, stride=stride, padding=padding, dilation=dilation).double()
    layer = randomize_(MixtureConv2d(base, 3, 2, alpha=0.5, adaptor_bias=True, variant=variant))
    x = torch.randn(2, 3, 11, 12, dtype=torch.float64)
    pi = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    with layer.context.use(pi):
        out = layer(x)
    manual = layer.base(x)
    for c in range(3):
        h = nn.functional.conv2d(x, layer.lora_A[c], None, **layer.split.opts_a)
        manual = manual + 0.5 * pi[c] * (nn.functional.conv2d(h, layer.lora_B[c], None, **layer.split.opts_b)
                                         + layer.lora_bias[c][:, None, None])
    torch.testing.assert_close(out, manual)
    weights = torch.randn_like(out)
    params = [layer.lora_A, layer.lora_B, layer.lora_bias, base.weight, pi]
    got = torch.autograd.grad((out * weights).sum(), params)
    want = torch.autograd.grad((manual * weights).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_conv_rejects_groups():
    with pytest.raises(NotImplementedError, match="groups"):
        MixtureConv2d(nn.Conv2d(4, 4, 3, groups=2), num_adaptors=2, rank=1)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.BatchNorm2d(4), (3, 4, 5, 5)),
        (lambda: nn.BatchNorm1d(4), (3, 4)),
        (lambda: nn.LayerNorm(4), (3, 2, 4)),
        (lambda: nn.GroupNorm(2, 4), (3, 4, 5)),
    ],
)
def test_norm_adaptors(make, shape):
    torch.manual_seed(0)
    base, twin = make(), make()
    twin.load_state_dict(base.state_dict())
    layer = MixtureNorm(base, num_adaptors=2)
    x = torch.randn(shape)
    pi = torch.tensor([0.3, 0.7])
    for mode in (True, False):
        layer.train(mode)
        twin.train(mode)
        with layer.context.use(pi):
            torch.testing.assert_close(layer(x), twin(x))  # zero adaptors == base (stats updated alike)
    randomize_(layer)
    layer.eval()
    twin.eval()
    with layer.context.use(pi):
        out = layer(x)
    xhat = (twin(x) - _view(twin.bias, twin, x)) / _view(twin.weight, twin, x)
    gamma, beta = pi @ layer.lora_weight, pi @ layer.lora_bias
    torch.testing.assert_close(out, twin(x) + xhat * _view(gamma, twin, x) + _view(beta, twin, x),
                               atol=1e-5, rtol=1e-4)


def _view(t, norm, x):
    return t if isinstance(norm, nn.LayerNorm) else t.reshape(-1, *([1] * (x.dim() - 2)))


def test_router_and_mixture_weights():
    router = Router(4)
    torch.testing.assert_close(router(), torch.full((4,), 0.25))
    logits = torch.tensor([0.0, -100.0, -100.0, -100.0])
    pi = mixture_weights(logits, floor=0.01)
    assert torch.allclose(pi, torch.tensor([1.0, 0.01, 0.01, 0.01]))  # floor not renormalised
    logits = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(mixture_weights(logits, temperature=2.0), torch.softmax(logits / 2, -1))
    zeros = torch.zeros(3)
    assert torch.equal(mixture_weights(zeros, training=False, noise_std=1.0), torch.full((3,), 1 / 3))
    torch.manual_seed(0)
    assert not torch.allclose(mixture_weights(zeros, training=True, noise_std=1.0), torch.full((3,), 1 / 3))


def test_context_is_restored_after_errors():
    ctx = MixtureContext()
    with pytest.raises(KeyError), ctx.use(torch.ones(2)):
        raise KeyError
    assert ctx.pi is None


@pytest.mark.parametrize("variant", CONV_VARIANTS)
def test_conv_string_padding_and_dilation(variant):
    base = nn.Conv2d(3, 4, (3, 5), padding="same", dilation=(2, 1))
    layer = randomize_(MixtureConv2d(base, 1, 2, variant=variant))
    x = torch.randn(2, 3, 8, 9)
    assert layer(x).shape == base(x).shape == (2, 4, 8, 9)


def test_router_noise_under_vmap_needs_randomness_flag():
    from torch.func import vmap

    logits = torch.zeros(4, 3)
    out = vmap(lambda lg: mixture_weights(lg, training=True, noise_std=1.0), randomness="different")(logits)
    assert out.shape == (4, 3) and not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out.sum(-1), torch.ones(4))
