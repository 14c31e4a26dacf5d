"""Which models the batched conv trainer can train: chains of Conv2d, ReLU, MaxPool2d, Flatten and Linear.

The CNNs of the FLoRAL experiments (``models.vision.cifar_cnn``, plain or with ConvLoRA mixtures) are
``nn.Sequential`` chains; ``parse_conv_chain`` reads one into layer records with parameter names, so
``conv_kernels`` can run every client of a round through it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..adapters import MixtureConv2d, MixtureLinear, MixtureModel
from .mlp_chain import RELU, Dense


@dataclass(frozen=True)
class Conv:
    """One Conv2d layer (plain or a ConvLoRA mixture): names, geometry and its adaptor bank (num = 0: plain)."""

    weight: str
    bias: str | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    lora_A: str | None = None
    lora_B: str | None = None
    lora_bias: str | None = None
    num: int = 0
    rank: int = 0
    alpha: float = 1.0


@dataclass(frozen=True)
class Pool:
    """A MaxPool2d with stride = kernel size, no padding, no dilation (floor mode)."""

    size: tuple[int, int]


FLATTEN = "flatten"
ConvLayer = Conv | Dense | Pool | str


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv(p: str, m: nn.Module) -> Conv | None:
    base = m.base if isinstance(m, MixtureConv2d) else m
    if base.groups != 1 or base.padding_mode != "zeros" or isinstance(base.padding, str):
        return None
    geometry = {"stride": _pair(base.stride), "padding": _pair(base.padding), "dilation": _pair(base.dilation)}
    if isinstance(m, MixtureConv2d):
        return Conv(p + "base.weight", p + "base.bias" if base.bias is not None else None, **geometry,
                    lora_A=p + "lora_A", lora_B=p + "lora_B",
                    lora_bias=p + "lora_bias" if m.lora_bias is not None else None,
                    num=m.num_adaptors, rank=m.rank, alpha=m.alpha)
    return Conv(p + "weight", p + "bias" if base.bias is not None else None, **geometry)


def _pool(m: nn.MaxPool2d) -> Pool | None:
    size, stride = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    if size != stride or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) or m.ceil_mode \
            or m.return_indices:
        return None
    return Pool(size)


def parse_conv_chain(model: nn.Module) -> list[ConvLayer] | None:
    """The layers of ``model`` (or of a MixtureModel's inner model) as a conv chain, or None if not one.

    Supported: an ``nn.Sequential`` of ``Conv2d`` / ``MixtureConv2d`` (groups 1, zero padding), ``ReLU``,
    ``MaxPool2d`` (stride = kernel), one ``Flatten`` after the last conv, then ``Linear`` /
    ``MixtureLinear`` and ``ReLU``; at least one conv. Anything else returns None.
    """
    prefix, seq = ("model.", model.model) if isinstance(model, MixtureModel) else ("", model)
    if not isinstance(seq, nn.Sequential):
        return None
    layers: list[ConvLayer] = []
    flat = False
    for name, m in seq.named_children():
        p = f"{prefix}{name}."
        layer: ConvLayer | None = None
        if isinstance(m, nn.Conv2d | MixtureConv2d) and not flat:
            layer = _conv(p, m)
        elif isinstance(m, nn.MaxPool2d) and not flat:
            layer = _pool(m)
        elif isinstance(m, nn.ReLU) and layers:
            layer = RELU
        elif isinstance(m, nn.Flatten) and not flat and m.start_dim == 1 and m.end_dim == -1:
            layer, flat = FLATTEN, True
        elif isinstance(m, MixtureLinear) and flat:
            layer = Dense(p + "base.weight", p + "base.bias" if m.base.bias is not None else None,
                          p + "lora_A", p + "lora_B", p + "lora_bias" if m.lora_bias is not None else None,
                          m.num_adaptors, m.rank, m.alpha)
        elif isinstance(m, nn.Linear) and flat:
            layer = Dense(p + "weight", p + "bias" if m.bias is not None else None)
        if layer is None:
            return None
        layers.append(layer)
    if not flat or not isinstance(layers[0], Conv) or not isinstance(layers[-1], Dense):
        return None
    return layers
