"""MixtureConv2d: an nn.Conv2d plus C ConvLoRA adaptors (conv in -> r, conv r -> out) mixed by pi."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .context import MixtureContext, current_pi
from .functional import init_lora_, mixture_conv2d_delta
from .rank import conv_rank_dims, resolve_rank

CONV_VARIANTS = ("balanced_2d", "balanced", "in", "out")


@dataclass(frozen=True)
class ConvSplit:
    """How a ConvLoRA variant splits the base kernel and its stride/padding/dilation between A and B."""

    kernel_a: tuple[int, int]
    kernel_b: tuple[int, int]
    opts_a: dict[str, Any]
    opts_b: dict[str, Any]


def _opts(stride: Any, padding: Any, dilation: Any) -> dict[str, Any]:
    return {"stride": stride, "padding": padding, "dilation": dilation}


def split_conv(base: nn.Conv2d, variant: str = "balanced_2d") -> ConvSplit:
    """Kernels and conv options of A and B for `variant`; composing them gives the base's output shape.

    balanced_2d: A (1, kw) with the width part of stride/padding/dilation, B (kh, 1) with the height
    part (a rank-r separable kernel). in: full kernel in A, 1x1 B. out: 1x1 A, full kernel in B.
    balanced: the full kernel on the side with fewer channels (A on ties). The side holding a full
    kernel also holds the base's stride/padding/dilation; a 1x1 side uses stride 1, no padding.
    """
    if variant not in CONV_VARIANTS:
        raise ValueError(f"unknown ConvLoRA variant {variant!r}; choose one of {CONV_VARIANTS}")
    if base.groups != 1:
        raise NotImplementedError(f"ConvLoRA supports groups=1 only, got a conv with groups={base.groups}")
    if base.padding_mode != "zeros":
        raise NotImplementedError(f"ConvLoRA supports padding_mode='zeros' only, got {base.padding_mode!r}")
    kh, kw = base.kernel_size
    full = _opts(base.stride, base.padding, base.dilation)
    unit = _opts(1, 0, 1)
    if variant == "balanced":
        variant = "in" if base.in_channels <= base.out_channels else "out"
    if variant == "in":
        return ConvSplit((kh, kw), (1, 1), full, unit)
    if variant == "out":
        return ConvSplit((1, 1), (kh, kw), unit, full)
    (sh, sw), (dh, dw) = base.stride, base.dilation
    if isinstance(base.padding, str):  # 'valid' / 'same' act per axis, so each factor can take it whole
        pad_a = pad_b = base.padding
    else:
        pad_a, pad_b = (0, base.padding[1]), (base.padding[0], 0)
    return ConvSplit((1, kw), (kh, 1), _opts((1, sw), pad_a, (1, dw)), _opts((sh, 1), pad_b, (dh, 1)))


class MixtureConv2d(nn.Module):
    """y = base(x) + alpha * sum_c pi_c (B_c * A_c * x + b_c), with ConvLoRA factors A_c, B_c.

    Parameters: `base.*`, `lora_A` [C, r, in, ka_h, ka_w], `lora_B` [C, out, r, kb_h, kb_w] and,
    with `adaptor_bias`, `lora_bias` [C, out].
    """

    def __init__(
        self,
        base: nn.Conv2d,
        num_adaptors: int,
        rank: float | int,
        alpha: float = 1.0,
        adaptor_bias: bool = False,
        init_bias: str = "zeros",
        variant: str = "balanced_2d",
        paper_conv_rank_bug: bool = False,
        context: MixtureContext | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"MixtureConv2d wraps nn.Conv2d, got {type(base).__name__}")
        if num_adaptors < 1:
            raise ValueError(f"num_adaptors must be >= 1, got {num_adaptors}")
        self.split = split_conv(base, variant)
        self.variant = variant
        self.base = base
        self.num_adaptors = num_adaptors
        d_in, d_out = conv_rank_dims(base.in_channels, base.out_channels, self.split.kernel_a,
                                     self.split.kernel_b, paper_conv_rank_bug)
        self.rank = resolve_rank(rank, d_in, d_out)
        self.alpha = float(alpha)
        self.context = context if context is not None else MixtureContext()
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        c, r = num_adaptors, self.rank
        self.lora_A = nn.Parameter(torch.empty(c, r, base.in_channels, *self.split.kernel_a, **kw))
        self.lora_B = nn.Parameter(torch.empty(c, base.out_channels, r, *self.split.kernel_b, **kw))
        self.lora_bias = nn.Parameter(torch.empty(c, base.out_channels, **kw)) if adaptor_bias else None
        # fan_in of A is d_in (the bug switch reproduces the official 2 * in_channels here too).
        bias_fan_in = r * self.split.kernel_b[0] * self.split.kernel_b[1]
        init_lora_(self.lora_A, self.lora_B, self.lora_bias, d_in, bias_fan_in, init_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Base output plus the pi-weighted ConvLoRA outputs (one conv pair for all C adaptors)."""
        pi = current_pi(self.context, self.num_adaptors, x)
        delta = mixture_conv2d_delta(x, self.lora_A, self.lora_B, pi, self.lora_bias,
                                     self.split.opts_a, self.split.opts_b)
        return self.base(x) + self.alpha * delta

    def extra_repr(self) -> str:
        return (f"num_adaptors={self.num_adaptors}, rank={self.rank}, alpha={self.alpha}, "
                f"variant={self.variant!r}")
