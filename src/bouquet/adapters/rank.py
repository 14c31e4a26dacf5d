"""Rank resolution: turn a relative budget rho or an explicit rank into a per-layer rank."""

from __future__ import annotations

import math


def resolve_rank(rank_or_rho: float | int, d_in: int, d_out: int) -> int:
    """Return the adaptor rank for a d_out x d_in weight: rho < 1 is a budget, an integer >= 1 is the rank.

    With rho, r = max(1, floor(rho * d_in * d_out / (d_in + d_out))), so that the adaptor's
    r * (d_in + d_out) parameters are about rho times the layer's d_in * d_out weights.
    """
    if isinstance(rank_or_rho, bool) or not isinstance(rank_or_rho, int | float):
        raise TypeError(f"rank_or_rho must be an int or a float, got {rank_or_rho!r}")
    if d_in < 1 or d_out < 1:
        raise ValueError(f"layer dimensions must be positive, got d_in={d_in}, d_out={d_out}")
    if not math.isfinite(rank_or_rho) or rank_or_rho <= 0:
        raise ValueError(f"rank_or_rho must be a budget in (0, 1) or an integer rank >= 1, "
                         f"got {rank_or_rho!r}")
    if rank_or_rho < 1:
        return max(1, math.floor(rank_or_rho * d_in * d_out / (d_in + d_out)))
    if float(rank_or_rho) != int(rank_or_rho):
        raise ValueError(f"a rank >= 1 must be an integer, got {rank_or_rho!r}")
    return int(rank_or_rho)


def conv_rank_dims(
    in_channels: int,
    out_channels: int,
    kernel_a: tuple[int, ...],
    kernel_b: tuple[int, ...],
    paper_conv_rank_bug: bool = False,
) -> tuple[int, int]:
    """Effective (d_in, d_out) of a ConvLoRA: channels times the kernel elements each factor carries.

    The kernel is split between A (in -> r) and B (r -> out), so d_in * d_out equals the base
    conv's weight count and r * (d_in + d_out) is the adaptor's, whatever the variant.
    `paper_conv_rank_bug=True` reproduces the official code, which counts every 2-d kernel as 2
    elements (`torch.Tensor((1, k)).numel() == 2`), giving ranks and init scales smaller than intended.
    """
    if paper_conv_rank_bug:
        return in_channels * len(kernel_a), out_channels * len(kernel_b)
    return in_channels * math.prod(kernel_a), out_channels * math.prod(kernel_b)
