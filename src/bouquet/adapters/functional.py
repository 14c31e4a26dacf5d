"""Pure maths of the adaptor mixtures: rank budgets, init and the batched forward; safe under vmap and grad."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def rank_scale(pi: Tensor, rank: int) -> Tensor:
    """Repeat each pi_c over its adaptor's `rank` channels: [C] -> [C * rank]."""
    return pi[:, None].expand(pi.shape[0], rank).reshape(-1)


def mixed_bias(pi: Tensor, bias: Tensor | None) -> Tensor | None:
    """sum_c pi_c b_c for adaptor biases [C, out], or None without biases."""
    return None if bias is None else pi @ bias


def stacked_factors(lora_A: Tensor, lora_B: Tensor) -> tuple[Tensor, Tensor]:
    """The C adaptors as one rank-(C*r) pair: A_cat [C*r, in] = [A_1; ...], B_cat [out, C*r] = [B_1, ...]."""
    num, rank, d_in = lora_A.shape
    return lora_A.reshape(num * rank, d_in), lora_B.permute(1, 0, 2).reshape(lora_B.shape[1], num * rank)


def mixture_linear_delta(
    x: Tensor, lora_A: Tensor, lora_B: Tensor, pi: Tensor, lora_bias: Tensor | None
) -> Tensor:
    """sum_c pi_c (B_c A_c x + b_c) for A [C, r, in], B [C, out, r], x [..., in].

    All C adaptors run as one rank-(C*r) product: h = x A_cat^T, scale each rank block by pi_c,
    then h B_cat^T, which sums over c for free.
    """
    a_cat, b_cat = stacked_factors(lora_A, lora_B)
    h = (x @ a_cat.T) * rank_scale(pi, lora_A.shape[1])
    out = h @ b_cat.T
    bias = mixed_bias(pi, lora_bias)
    return out if bias is None else out + bias


def mixture_conv2d_delta(
    x: Tensor,
    lora_A: Tensor,
    lora_B: Tensor,
    pi: Tensor,
    lora_bias: Tensor | None,
    opts_a: dict[str, Any],
    opts_b: dict[str, Any],
) -> Tensor:
    """ConvLoRA mixture, A [C, r, in, ka_h, ka_w], B [C, out, r, kb_h, kb_w], x [N, in, H, W] or [in, H, W].

    One conv to C*r channels, a per-channel pi scale, one conv back to `out` channels.
    """
    num, rank = lora_A.shape[:2]
    a_cat = lora_A.reshape(num * rank, *lora_A.shape[2:])
    b_cat = lora_B.transpose(0, 1).reshape(lora_B.shape[1], num * rank, *lora_B.shape[3:])
    h = F.conv2d(x, a_cat, None, **opts_a)
    h = h * rank_scale(pi, rank)[:, None, None]
    out = F.conv2d(h, b_cat, None, **opts_b)
    bias = mixed_bias(pi, lora_bias)
    return out if bias is None else out + bias[:, None, None]


def _composite_sizes(lora_A: Tensor, lora_B: Tensor) -> tuple[int, int, int, int]:
    """The factors' kernel sizes (A's h, w, B's h, w), checked to compose into one same-size kernel."""
    (ah, aw), (bh, bw) = lora_A.shape[-2:], lora_B.shape[-2:]
    if min(ah, bh) > 1 or min(aw, bw) > 1:
        raise ValueError("conv factors overlap on an axis; the composite is not a single same-size kernel")
    return ah, aw, bh, bw


def conv_delta_kernel(lora_A: Tensor, lora_B: Tensor) -> Tensor:
    """Dense kernel [out, in, kh, kw] of the conv pair B o A, for A [r, in, ka_h, ka_w], B [out, r, kb_h, kb_w].

    Valid for every ConvLoRA variant: on each axis only one factor has a kernel longer than 1 and
    carries that axis's stride/padding/dilation, so B o A equals one conv with the base's options.
    """
    ah, aw, bh, bw = _composite_sizes(lora_A, lora_B)
    full = torch.einsum("orhw,rixy->oihxwy", lora_B, lora_A)
    return full.reshape(lora_B.shape[0], lora_A.shape[1], ah * bh, aw * bw)


def mixture_conv2d_kernel(lora_A: Tensor, lora_B: Tensor, pi: Tensor) -> Tensor:
    """sum_c pi_c B_c o A_c as one dense kernel [..., out, in, kh, kw] (A [..., C, r, ...], B [..., C, out, r, ...],
    pi [..., C]; leading dims are batch dims, e.g. clients, so no vmap is needed).

    Folding the C*r ranks into the kernel costs out*in*kh*kw*C*r multiply-adds per step, against
    N*H*W times that for the conv pair of `mixture_conv2d_delta`: the layer then runs one conv,
    as cheap as the base alone, and gives the same output. Valid for every ConvLoRA variant (see
    `conv_delta_kernel`).
    """
    ah, aw, bh, bw = _composite_sizes(lora_A, lora_B)
    scaled = lora_A * pi[..., None, None, None, None]
    full = torch.einsum("...corhw,...crixy->...oihxwy", lora_B, scaled)
    return full.reshape(*full.shape[:-6], lora_B.shape[-4], lora_A.shape[-3], ah * bh, aw * bw)


@torch.no_grad()
def init_lora_(lora_A: Tensor, lora_B: Tensor, lora_bias: Tensor | None, fan_in: int, bias_fan_in: int,
               init_bias: str = "zeros") -> None:
    """A ~ U(+-sqrt(6 / fan_in)), B = 0 (so the model starts at the base), bias zeros or U(+-1/sqrt(fan))."""
    bound = math.sqrt(6.0 / fan_in)
    lora_A.uniform_(-bound, bound)
    lora_B.zero_()
    if lora_bias is None:
        return
    if init_bias == "zeros":
        lora_bias.zero_()
    elif init_bias == "uniform":
        # The official code leaves PyTorch's default bias init on the adaptor's output layer:
        # U(+-1/sqrt(fan_in of that layer)) = U(+-1) at rank 1, a random per-adaptor offset at init.
        b = 1.0 / math.sqrt(bias_fan_in)
        lora_bias.uniform_(-b, b)
    else:
        raise ValueError(f"init_bias must be 'zeros' or 'uniform', got {init_bias!r}")


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
