"""Which models the hand-batched kernels can train: chains of Flatten, Linear / MixtureLinear and ReLU."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..adapters import MixtureLinear, MixtureModel


@dataclass(frozen=True)
class Dense:
    """One Linear layer: parameter names (None when absent) and its adaptor bank (num = 0: plain Linear)."""

    weight: str
    bias: str | None
    lora_A: str | None = None
    lora_B: str | None = None
    lora_bias: str | None = None
    num: int = 0
    rank: int = 0
    alpha: float = 1.0


RELU = "relu"
Layer = Dense | str


def parse_chain(model: nn.Module) -> list[Layer] | None:
    """The layers of ``model`` (or of a MixtureModel's inner model) as a chain, or None if not one.

    Supported: an ``nn.Sequential`` of ``Flatten`` (as the first layer only), ``Linear``,
    ``MixtureLinear`` and ``ReLU``; anything else returns None (the caller keeps the generic trainer).
    """
    prefix, seq = ("model.", model.model) if isinstance(model, MixtureModel) else ("", model)
    if not isinstance(seq, nn.Sequential):
        return None
    layers: list[Layer] = []
    for i, (name, m) in enumerate(seq.named_children()):
        if isinstance(m, nn.ReLU) and not layers:
            return None
        p = f"{prefix}{name}."
        if isinstance(m, nn.Flatten) and i == 0 and m.start_dim == 1 and m.end_dim == -1:
            continue  # the trainer flattens every example to [in] anyway
        if isinstance(m, MixtureLinear):
            layers.append(Dense(p + "base.weight", p + "base.bias" if m.base.bias is not None else None,
                                p + "lora_A", p + "lora_B", p + "lora_bias" if m.lora_bias is not None else None,
                                m.num_adaptors, m.rank, m.alpha))
        elif isinstance(m, nn.Linear):
            layers.append(Dense(p + "weight", p + "bias" if m.bias is not None else None))
        elif isinstance(m, nn.ReLU):
            layers.append(RELU)
        else:
            return None
    dense = [layer for layer in layers if isinstance(layer, Dense)]
    if not dense or not isinstance(layers[-1], Dense):
        return None
    return layers
