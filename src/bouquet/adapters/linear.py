"""MixtureLinear: a frozen-or-not nn.Linear plus C low-rank adaptors mixed by the shared pi."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .context import MixtureContext, current_pi
from .functional import init_lora_, mixture_linear_delta
from .rank import resolve_rank


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
