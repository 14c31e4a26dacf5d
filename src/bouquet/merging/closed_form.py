"""Potara's closed-form mixing weight and the exact delta-W merge of two LoRA parameter sets.

Reconstruction (the paper's formula is not public; see docs/potara.md): with Gaussian task vectors
tau_F ~ N(tau* + b, Sigma_F), tau_L ~ N(tau*, Sigma_L) and an L-smooth loss along the segment
between them (linear mode connectivity), the bound on the merged model's loss is minimised by

    lambda = tr(Sigma_L) / (||b||^2 + tr(Sigma_F) + tr(Sigma_L))      (lambda = weight on federated)

All functions are pure tensor code, safe under ``torch.func.vmap`` (lambda may be a batched tensor).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

Params = dict[str, Tensor]


def mixing_weight(trace_local: Tensor, trace_fed: Tensor, bias: Tensor | float = 0.0, eps: float = 1e-12) -> Tensor:
    """lambda = tr_L / (bias + tr_F + tr_L), clipped to [0, 1]; 0.5 when every term is zero."""
    trace_local = torch.as_tensor(trace_local)
    denom = bias + trace_fed + trace_local
    lam = trace_local / torch.clamp(torch.as_tensor(denom, dtype=trace_local.dtype), min=eps)
    lam = torch.where(torch.as_tensor(denom) > eps, lam, torch.full_like(lam, 0.5))
    return lam.clamp(0.0, 1.0)


def bias_from_distance(dist2: Tensor, trace_fed: Tensor, trace_local: Tensor) -> Tensor:
    """||b||^2 estimate: E||tau_F - tau_L||^2 = ||b||^2 + tr_F + tr_L, so b2 = max(0, d2 - tr_F - tr_L)."""
    return (dist2 - trace_fed - trace_local).clamp_min(0.0)


def expected_quadratic_loss(lam: Tensor, trace_fed: Tensor, trace_local: Tensor, bias: Tensor | float = 0.0) -> Tensor:
    """The variance-trace bound's lambda-dependent part: lam^2 (b2 + tr_F) + (1 - lam)^2 tr_L."""
    return lam**2 * (bias + trace_fed) + (1 - lam) ** 2 * trace_local


# ---------------------------------------------------------------------------------------------
# Layers and the delta-W merge.


def layer_of(name: str) -> str:
    """The layer path of an adaptor entry (``model.x.lora_A`` -> ``model.x``)."""
    return name.rpartition(".")[0]


def lora_layers(params: Mapping[str, Tensor]) -> list[str]:
    """Sorted layer paths that carry a ``lora_A``/``lora_B`` pair."""
    return sorted({layer_of(k) for k in params if k.endswith(".lora_A")})


def param_layers(params: Mapping[str, Tensor]) -> list[str]:
    """Sorted layer paths of every entry: the LoRA layers and modules trained whole (a head's weight and bias)."""
    return sorted({layer_of(k) for k in params})


def layer_lambda(lam: Tensor, layers: list[str], layer: str) -> Tensor:
    """The weight of one layer: ``lam`` is a scalar (one per client) or a vector with one entry per layer."""
    return lam if lam.dim() == 0 else lam[layers.index(layer)]


def merge_delta_w(fed: Mapping[str, Tensor], loc: Mapping[str, Tensor], lam: Tensor) -> Params:
    """lam * dW_F + (1 - lam) * dW_L, exactly, by rank stacking: A = [A_F; A_L], B = [lam B_F, (1-lam) B_L].

    Works on C = 1 adaptor tensors ``lora_A`` [1, r, ...] and ``lora_B`` [1, out, r, ...] (rank on
    dim 1 of A and dim 2 of B); never averages A and B separately. Other entries (adaptor biases, the
    weights of a head trained whole) are interpolated linearly, which is exact because the layer's output is
    linear in them: the merged head computes lam * head_F(h) + (1 - lam) * head_L(h).
    """
    layers = param_layers(fed)
    out: Params = {}
    for name, f in fed.items():
        g = loc[name]
        w = layer_lambda(lam, layers, layer_of(name)).to(f.dtype)
        if name.endswith(".lora_A"):
            out[name] = torch.cat([f, g], dim=1)
        elif name.endswith(".lora_B"):
            out[name] = torch.cat([w * f, (1 - w) * g], dim=2)
        else:
            out[name] = w * f + (1 - w) * g
    return out


def squared_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor], layers: list[str] | None = None,
                     metric: Mapping[str, Tensor] | None = None) -> Tensor:
    """sum_j m_j (a_j - b_j)^2 over all entries (scalar), or per layer ([L]) when ``layers`` is given."""
    terms = {k: ((a[k] - b[k]) ** 2 * (1.0 if metric is None else metric[k])).sum() for k in a}
    return reduce_groups(terms, layers)


def reduce_groups(values: Mapping[str, Tensor], layers: list[str] | None) -> Tensor:
    """Sum scalar per-parameter values into one scalar, or into one value per layer."""
    if layers is None:
        return torch.stack(list(values.values())).sum()
    return torch.stack([sum(v for k, v in values.items() if layer_of(k) == layer) for layer in layers])
