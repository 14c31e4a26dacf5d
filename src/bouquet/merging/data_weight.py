"""Our data-following Potara terms, all in delta-W space with one (Euclidean) metric.

* tr Sigma_L from K local LoRAs, each fit on its own 1/K of the client's rows (split-half: K = 2):
  a fit on n/K rows has K times the variance of one on n rows, so tr Sigma_L = sum_k ||dW_k - mean||^2
  / (K (K - 1)) (K = 2: ||dW_1 - dW_2||^2 / 4). No extra bytes.
* tr Sigma_F from the spread of the last federated round's client updates (as delta-W) divided by the
  effective number of clients: one scalar the server can broadcast.
* d^2 = ||dW_F - dW_L||^2, the bias = max(0, d^2 - tr Sigma_F - tr Sigma_L).

None of these depends on the learning rate or batch size except through the fitted models themselves.
Pure tensor code, safe under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .closed_form import layer_of, lora_layers

Params = dict[str, Tensor]


def delta_w(params: Mapping[str, Tensor], lead: int = 0, scale: float = 1.0) -> dict[str, Tensor]:
    """The flat update of every adaptor layer: vec(scale B A) (Linear or Conv2d), plus its adaptor bias if any.

    ``lead`` leading dims (clients) are kept; the adaptor dim C must be 1 (plain LoRA). ``scale`` is the
    LoRA's alpha (the layer adds alpha B A x). A module trained whole (a head's weight and bias) enters
    with its weights as they are: only differences of delta_w are ever used, so its initial value cancels
    and what remains is its update, in the same units as alpha B A.
    """
    out: dict[str, Tensor] = {}
    lora = lora_layers(params)
    for layer in lora:
        a, b = params[layer + ".lora_A"].select(lead, 0), params[layer + ".lora_B"].select(lead, 0)  # C = 1
        dw = _product(a, b, lead) * scale
        parts = [dw.flatten(lead)]
        bias = params.get(layer + ".lora_bias")
        if bias is not None:
            parts.append(bias.flatten(lead) * scale)
        out[layer] = torch.cat(parts, dim=-1)
    whole: dict[str, list[Tensor]] = {}
    for k in sorted(params):
        if layer_of(k) not in lora:
            whole.setdefault(layer_of(k), []).append(params[k].flatten(lead))
    out.update({layer: torch.cat(parts, dim=-1) for layer, parts in whole.items()})
    return out


def _product(a: Tensor, b: Tensor, lead: int) -> Tensor:
    """B A with the rank contracted: [..., out * kb, in * ka], a permutation of the dense update's entries.

    A [..., r, in, *ka], B [..., out, r, *kb] (Linear: no kernel dims). The conv kernel B o A has the
    same entries in another order, so norms and differences are those of the dense update.
    """
    r = a.shape[lead]
    a2 = a.reshape(*a.shape[:lead], r, -1)
    b2 = b.movedim(lead + 1, -1).reshape(*b.shape[:lead], -1, r)
    return b2 @ a2


def _reduce(values: Mapping[str, Tensor], layers: Sequence[str] | None) -> Tensor:
    """One scalar (sum over layers) or one value per layer, in ``layers`` order."""
    if layers is None:
        return torch.stack(list(values.values())).sum(0)
    return torch.stack([values[layer] for layer in layers], dim=-1)


def delta_distance(fed: Mapping[str, Tensor], loc: Mapping[str, Tensor],
                   layers: Sequence[str] | None = None, scale: float = 1.0) -> Tensor:
    """d^2 = ||dW_F - dW_L||^2, summed, or per layer."""
    df, dl = delta_w(fed, scale=scale), delta_w(loc, scale=scale)
    return _reduce({k: ((df[k] - dl[k]) ** 2).sum() for k in df}, layers)


def fold_trace(folds: Sequence[Mapping[str, Tensor]], layers: Sequence[str] | None = None,
               scale: float = 1.0) -> Tensor:
    """tr Sigma_L of the full-data fit from K disjoint-fold fits: sum_k ||dW_k - mean||^2 / (K (K - 1))."""
    k = len(folds)
    if k < 2:
        raise ValueError(f"folds: expected at least 2 fold models, got {k}")
    dws = [delta_w(f, scale=scale) for f in folds]
    terms = {}
    for layer in dws[0]:
        stack = torch.stack([d[layer] for d in dws])
        terms[layer] = ((stack - stack.mean(0)) ** 2).sum() / (k * (k - 1))
    return _reduce(terms, layers)


def delta_spread(uploads: Mapping[str, Tensor], weights: Tensor, layers: Sequence[str] | None = None,
                 scale: float = 1.0) -> Tensor:
    """Across-client variance of the uploads' delta-W [K, ...] over the effective number of clients.

    K_eff = (sum w)^2 / sum w^2; the result estimates the variance of the weighted mean (the federated model).
    """
    w = weights.to(torch.float64)
    w = w / w.sum()
    k_eff = 1.0 / (w * w).sum()
    terms = {}
    for layer, d in delta_w(uploads, lead=1, scale=scale).items():
        ww = w.to(d.dtype)[:, None]
        mean = (ww * d).sum(0)
        terms[layer] = (ww * (d - mean) ** 2).sum() / k_eff.to(d.dtype)
    return _reduce(terms, layers)


def fold_mask(x: Tensor, folds: int, fold: int) -> Tensor:
    """1.0 where example i of a batch belongs to ``fold``: a hash of its input, floor(1000 sum|x_i|) mod K.

    The batch carries no row ids, so the fold must follow from the example itself; the hash keeps each
    row in one fold across rounds, epochs and shuffles.
    """
    key = torch.floor(x.reshape(x.shape[0], -1).abs().sum(1).to(torch.float64) * 1000.0)
    return (torch.remainder(key, folds) == fold).to(x.dtype)

