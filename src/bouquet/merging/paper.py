"""The paper's form of Potara's weight (a secondary reading of arXiv 2602.18658 v1; see docs/potara.md).

lambda = (b - c) / (a + b - 2c), the minimiser of lambda^2 a + (1 - lambda)^2 b + 2 lambda (1 - lambda) c,
with a = tr Sigma_F and b = tr Sigma_L from the inverse diagonal Fisher and c = rho sqrt(a b), rho a
gradient correlation clipped to [0, 1]. Applied per factor (A and B separately), as its Appendix B is
read to do; ``merge_factors`` is that factor-space merge. Pure tensor code, safe under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .closed_form import layer_lambda, layer_of, param_layers

Params = dict[str, Tensor]


def paper_weight(a: Tensor, b: Tensor, c: Tensor, eps: float = 1e-12) -> Tensor:
    """(b - c) / (a + b - 2c) clipped to [0, 1]; 0.5 when the denominator is <= eps (a = b = c)."""
    denom = a + b - 2 * c
    lam = (b - c) / torch.clamp(denom, min=eps)
    return torch.where(denom > eps, lam, torch.full_like(lam, 0.5)).clamp(0.0, 1.0)


def gradient_correlation(g_fed: Mapping[str, Tensor], g_loc: Mapping[str, Tensor], w: Tensor,
                         layers: Sequence[str] | None = None) -> Tensor:
    """rho = sum_i w_i <g_F,i, g_L,i> / sqrt(sum_i w_i |g_F,i|^2 sum_i w_i |g_L,i|^2), clipped to [0, 1].

    Per-example gradients of the two models at the same examples; one value, or one per layer.
    """
    def dot(u: Mapping[str, Tensor], v: Mapping[str, Tensor], keys) -> Tensor:
        return sum((u[k] * v[k]).flatten(1).sum(1) * w.to(u[k].dtype) for k in keys).sum()

    groups = [list(g_fed)] if layers is None else [[k for k in g_fed if layer_of(k) == la] for la in layers]
    rhos = []
    for keys in groups:
        num, ff, ll = dot(g_fed, g_loc, keys), dot(g_fed, g_fed, keys), dot(g_loc, g_loc, keys)
        rhos.append((num / torch.sqrt(ff * ll).clamp_min(1e-30)).clamp(0.0, 1.0))
    return rhos[0] if layers is None else torch.stack(rhos)


def merge_factors(fed: Mapping[str, Tensor], loc: Mapping[str, Tensor], lam: Tensor) -> Params:
    """The paper's factor-space merge: A = lam A_F + (1 - lam) A_L, B likewise (the product has cross terms)."""
    layers = param_layers(fed)
    return {k: (lambda w: w * f + (1 - w) * loc[k])(layer_lambda(lam, layers, layer_of(k)).to(f.dtype))
            for k, f in fed.items()}
