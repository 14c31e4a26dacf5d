"""MixtureNorm: C extra affine transforms on a norm layer's normalized input, mixed by pi (off by default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .context import MixtureContext, current_pi

NORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


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
