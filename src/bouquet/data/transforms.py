"""Plain-torch image transforms for the cluster shifts and normalisation (no torchvision)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    """Rotate `[n, C, H, W]` images counter-clockwise, like `torch.rot90(x, 1, (-2, -1))` at 90 degrees.

    Multiples of 90 use exact `torch.rot90`; other angles use bilinear sampling with zero fill.
    """
    quarter = degrees / 90.0
    if abs(quarter - round(quarter)) < 1e-9:
        k = int(round(quarter)) % 4
        return torch.rot90(x, k, dims=(-2, -1)).contiguous() if k else x
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def channel_stats(x: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of `[n, C, H, W]` images, accumulated in float64 chunks."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for i in range(0, x.shape[0], chunk):
        b = x[i:i + chunk].to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        total += b.sum(1)
        total_sq += (b * b).sum(1)
    count = x.shape[0] * x[0, 0].numel()
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-8)
    return mean.to(torch.float32), std.to(torch.float32)


def standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
