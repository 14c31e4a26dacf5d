"""The adaptor layers: MixtureLinear, MixtureConv2d (ConvLoRA variants) and MixtureNorm, thin over `functional`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .functional import (
    conv_rank_dims,
    init_lora_,
    mixed_bias,
    mixture_conv2d_kernel,
    mixture_linear_delta,
    resolve_rank,
)
from .mixture import MixtureContext, current_pi

CONV_VARIANTS = ("balanced_2d", "balanced", "in", "out")
NORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


class MixtureLinear(nn.Module):
    """y = base(x) + alpha * sum_c pi_c (B_c A_c x + b_c); C = 1 with pi = [1] is plain LoRA.

    Parameters: `base.weight`/`base.bias` (the wrapped layer), `lora_A` [C, r, in],
    `lora_B` [C, out, r] and, with `adaptor_bias`, `lora_bias` [C, out].
    """

    def __init__(
        self,
        base: nn.Linear,
        num_adaptors: int,
        rank: float | int,
        alpha: float = 1.0,
        adaptor_bias: bool = False,
        init_bias: str = "zeros",
        context: MixtureContext | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"MixtureLinear wraps nn.Linear, got {type(base).__name__}")
        if num_adaptors < 1:
            raise ValueError(f"num_adaptors must be >= 1, got {num_adaptors}")
        self.base = base
        self.num_adaptors = num_adaptors
        self.rank = resolve_rank(rank, base.in_features, base.out_features)
        self.alpha = float(alpha)
        self.context = context if context is not None else MixtureContext()
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(num_adaptors, self.rank, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(num_adaptors, base.out_features, self.rank, **kw))
        bias = torch.empty(num_adaptors, base.out_features, **kw)
        self.lora_bias = nn.Parameter(bias) if adaptor_bias else None
        init_lora_(self.lora_A, self.lora_B, self.lora_bias, base.in_features, self.rank, init_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Base output plus the pi-weighted adaptor outputs (all C at once)."""
        pi = current_pi(self.context, self.num_adaptors, x)
        delta = mixture_linear_delta(x, self.lora_A, self.lora_B, pi, self.lora_bias)
        return self.base(x) + self.alpha * delta

    def extra_repr(self) -> str:
        return f"num_adaptors={self.num_adaptors}, rank={self.rank}, alpha={self.alpha}"


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
        """One conv with the base kernel plus the pi-weighted ConvLoRA kernels folded in.

        Equal to base(x) + alpha * mixture_conv2d_delta(...) (the conv pair), at the cost of the base conv.
        """
        pi = current_pi(self.context, self.num_adaptors, x)
        b = self.base
        weight = b.weight + self.alpha * mixture_conv2d_kernel(self.lora_A, self.lora_B, pi)
        bias = b.bias
        if self.lora_bias is not None:
            extra = self.alpha * mixed_bias(pi, self.lora_bias)
            bias = extra if bias is None else bias + extra
        return F.conv2d(x, weight, bias, b.stride, b.padding, b.dilation, b.groups)

    def extra_repr(self) -> str:
        return (f"num_adaptors={self.num_adaptors}, rank={self.rank}, alpha={self.alpha}, "
                f"variant={self.variant!r}")


def _affine_shape(base: nn.Module) -> tuple[int, ...]:
    if isinstance(base, _BatchNorm):
        return (base.num_features,)
    if isinstance(base, nn.GroupNorm):
        return (base.num_channels,)
    return tuple(base.normalized_shape)


class MixtureNorm(nn.Module):
    """y = norm(x) + sum_c pi_c (gamma_c * xhat + beta_c), xhat the base's normalized input.

    Parameters: `base.*`, `lora_weight` [C, *affine] and `lora_bias` [C, *affine], both zero at init
    so the layer starts equal to the base. The input is normalized once, exactly as the base would
    (BatchNorm in the same train/eval mode, updating its running stats once), then both affines apply.
    """

    def __init__(self, base: nn.Module, num_adaptors: int, context: MixtureContext | None = None) -> None:
        super().__init__()
        if not isinstance(base, NORM_TYPES):
            raise TypeError(f"MixtureNorm wraps BatchNorm/LayerNorm/GroupNorm, got {type(base).__name__}")
        self.base = base
        self.num_adaptors = num_adaptors
        self.context = context if context is not None else MixtureContext()
        ref = next(base.parameters(), None)
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        shape = _affine_shape(base)
        self.lora_weight = nn.Parameter(torch.zeros(num_adaptors, *shape, **kw))
        self.lora_bias = nn.Parameter(torch.zeros(num_adaptors, *shape, **kw))

    def _normalize(self, x: Tensor) -> Tensor:
        """The base's normalization without its affine part."""
        b = self.base
        if isinstance(b, nn.LayerNorm):
            return F.layer_norm(x, b.normalized_shape, None, None, b.eps)
        if isinstance(b, nn.GroupNorm):
            return F.group_norm(x, b.num_groups, None, None, b.eps)
        # Mirrors _BatchNorm.forward so running statistics evolve exactly as with the plain layer.
        factor = 0.0 if b.momentum is None else b.momentum
        if b.training and b.track_running_stats and b.num_batches_tracked is not None:
            b.num_batches_tracked.add_(1)
            factor = 1.0 / float(b.num_batches_tracked) if b.momentum is None else b.momentum
        use_batch = b.training or (b.running_mean is None and b.running_var is None)
        track = not b.training or b.track_running_stats
        return F.batch_norm(x, b.running_mean if track else None, b.running_var if track else None,
                            None, None, use_batch, factor, b.eps)

    def _channel_view(self, t: Tensor, x: Tensor) -> Tensor:
        # Per-channel affines (BatchNorm, GroupNorm) act on dim 1 of [N, C, ...]; LayerNorm's on the tail.
        if isinstance(self.base, nn.LayerNorm):
            return t
        return t.reshape(t.shape[0], *([1] * (x.dim() - 2)))

    def forward(self, x: Tensor) -> Tensor:
        """Normalize once, apply the base affine and the pi-mixed adaptor affine."""
        pi = current_pi(self.context, self.num_adaptors, x)
        xhat = self._normalize(x)
        gamma = torch.tensordot(pi, self.lora_weight, dims=1)
        beta = torch.tensordot(pi, self.lora_bias, dims=1)
        w, b = self.base.weight, self.base.bias
        scale = gamma if w is None else w + gamma
        shift = beta if b is None else b + beta
        return xhat * self._channel_view(scale, x) + self._channel_view(shift, x)

    def extra_repr(self) -> str:
        return f"num_adaptors={self.num_adaptors}"
