"""The router: per-client logits over C adaptors turned into mixture weights pi."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mixture_weights(
    logits: Tensor,
    *,
    training: bool = False,
    noise_std: float = 0.0,
    floor: float = 0.0,
    temperature: float = 1.0,
) -> Tensor:
    """pi = softmax((logits + noise) / temperature), then clamp(min=floor) without renormalising.

    The noise is the official uniform noise_std * U[0, 1), drawn only when training and noise_std > 0
    (under vmap that needs `randomness="different"` or `"same"`). The official floor is 0.01: with a
    one-hot router every other adaptor still contributes 1%; the sum of pi may then exceed 1.
    """
    if training and noise_std > 0:
        logits = logits + noise_std * torch.rand_like(logits)
    pi = torch.softmax(logits / temperature, dim=-1)
    return pi.clamp(min=floor) if floor > 0 else pi


class Router(nn.Module):
    """Holds `logits` [C] (init 0, so pi starts uniform) and the settings that turn them into pi."""

    def __init__(self, num_adaptors: int, noise_std: float = 0.0, floor: float = 0.0,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if num_adaptors < 1:
            raise ValueError(f"num_adaptors must be >= 1, got {num_adaptors}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.num_adaptors = num_adaptors
        self.noise_std = float(noise_std)
        self.floor = float(floor)
        self.temperature = float(temperature)
        self.logits = nn.Parameter(torch.zeros(num_adaptors))

    def weights(self, training: bool) -> Tensor:
        """The mixture weights pi [C] for one forward."""
        return mixture_weights(self.logits, training=training, noise_std=self.noise_std,
                               floor=self.floor, temperature=self.temperature)

    def forward(self) -> Tensor:
        """pi in the module's current train/eval mode."""
        return self.weights(self.training)

    def extra_repr(self) -> str:
        return (f"num_adaptors={self.num_adaptors}, noise_std={self.noise_std}, floor={self.floor}, "
                f"temperature={self.temperature}")
