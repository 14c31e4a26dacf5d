"""Rank resolution and the FLoRAL reference parameter overheads (floral.md section 4)."""

import pytest
import torch
from torch import nn

from bouquet.adapters import adaptor_parameter_count, conv_rank_dims, inject, resolve_rank


def test_resolve_rank_by_hand():
    # MNIST MLP 784-200-10: 0.01 * 784*200/984 = 1.59 -> 1; 0.01 * 200*10/210 = 0.095 -> floor 0 -> max 1
    assert resolve_rank(0.01, 784, 200) == 1
    assert resolve_rank(0.01, 200, 10) == 1
    # 0.1 * 156800 / 984 = 15.93 -> 15
    assert resolve_rank(0.1, 784, 200) == 15
    assert resolve_rank(0.1, 200, 10) == 1
    assert resolve_rank(4, 784, 200) == 4
    assert resolve_rank(4.0, 10, 3) == 4


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan")])
def test_resolve_rank_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="rank_or_rho"):
        resolve_rank(bad, 10, 10)


def test_resolve_rank_rejects_fractional_rank():
    with pytest.raises(ValueError):
        resolve_rank(2.5, 10, 10)


def test_conv_dims_count_the_kernel():
    # balanced_2d on 3x3, 32 -> 64: A carries (1, 3), B (3, 1); d_in * d_out = the base's weight count.
    assert conv_rank_dims(32, 64, (1, 3), (3, 1)) == (96, 192)
    assert 96 * 192 == 32 * 64 * 9
    # The official numel bug counts every 2-d kernel as 2 elements.
    assert conv_rank_dims(32, 64, (1, 3), (3, 1), paper_conv_rank_bug=True) == (64, 128)
    assert conv_rank_dims(3, 32, (5, 5), (1, 1)) == (75, 32)


def mnist_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10))


def cifar10_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(3),
        nn.Flatten(), nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def vgg8():
    layers: list[nn.Module] = []
    chans = [3, 16, 32, 64, 128, 512]
    for a, b in zip(chans[:-1], chans[1:], strict=True):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 100)]
    return nn.Sequential(*layers)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("make", "base", "c", "rho", "bug", "expected"),
    [
        # Reference table: adaptor biases on (official bias=True), every Linear/Conv2d targeted,
        # balanced_2d convs, router logits not counted.
        (mnist_mlp, 159_010, 4, 0.01, False, 5_616),
        (mnist_mlp, 159_010, 4, 0.1, False, 60_720),
        # Convs: the reference numbers need the official numel bug (paper_conv_rank_bug=True).
        (cifar10_cnn, 87_178, 4, 0.01, True, 7_180),
        (cifar10_cnn, 87_178, 4, 0.1, True, 32_396),
        (vgg8, 1_264_388, 10, 0.01, True, 114_890),
        (vgg8, 1_264_388, 10, 0.1, True, 1_024_770),
        # With the kernel counted correctly the conv ranks (and counts) grow.
        (cifar10_cnn, 87_178, 4, 0.01, False, 7_180),
        (cifar10_cnn, 87_178, 4, 0.1, False, 34_700),
        (vgg8, 1_264_388, 10, 0.01, False, 134_090),
        (vgg8, 1_264_388, 10, 0.1, False, 1_247_010),
    ],
)
def test_reference_parameter_overhead(make, base, c, rho, bug, expected):
    torch.manual_seed(0)
    net = make()
    assert n_params(net) == base
    model = inject(net, num_adaptors=c, rank=rho, adaptor_bias=True, paper_conv_rank_bug=bug)
    assert adaptor_parameter_count(model) == expected


def test_mlp_by_hand_count():
    # Per adaptor: layer 1 rank 1 -> 784 + 200 (A, B) + 200 (bias); layer 2 rank 1 -> 200 + 10 + 10.
    model = inject(mnist_mlp(), num_adaptors=4, rank=0.01, adaptor_bias=True)
    assert 4 * ((784 + 200 + 200) + (200 + 10 + 10)) == adaptor_parameter_count(model) == 5_616
    # Local adaptor (C = 1, 1%) is +0.9% of the base.
    local = inject(mnist_mlp(), num_adaptors=1, rank=0.01, adaptor_bias=True)
    assert round(100 * adaptor_parameter_count(local) / 159_010, 1) == 0.9
