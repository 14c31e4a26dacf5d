"""Merging C = 1 adaptors in delta-W space (Potara): dense deltas and exact rank stacking."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .functional import conv_delta_kernel
from .layers import MixtureConv2d, MixtureLinear


def _single(t: Tensor, name: str) -> Tensor:
    if t.shape[0] != 1:
        raise ValueError(f"{name} has {t.shape[0]} adaptors; delta-W helpers need C = 1")
    return t[0]


def lora_delta_weight(layer_or_factors: nn.Module | tuple[Tensor, ...]) -> Tensor:
    """Dense alpha * B A of a C = 1 adaptor: [out, in] (Linear) or [out, in, kh, kw] (Conv2d).

    Accepts a MixtureLinear/MixtureConv2d, or a tuple (A, B) or (A, B, alpha) with or without the
    leading C = 1 dim. The adaptor bias is not part of the delta weight (it adds to the base bias).
    """
    if isinstance(layer_or_factors, MixtureLinear | MixtureConv2d):
        layer = layer_or_factors
        A, B, alpha = layer.lora_A, layer.lora_B, layer.alpha
    else:
        A, B, *rest = layer_or_factors
        alpha = float(rest[0]) if rest else 1.0
    if A.dim() in (3, 5):
        A, B = _single(A, "lora_A"), _single(B, "lora_B")
    if A.dim() == 2:
        return alpha * (B @ A)
    if A.dim() == 4:
        return alpha * conv_delta_kernel(A, B)
    raise ValueError(f"unexpected adaptor shape {tuple(A.shape)}")


def _layer_lam(lam: float | Mapping[str, float], layer: str) -> float:
    if isinstance(lam, Mapping):
        if layer not in lam:
            raise KeyError(f"no mixing weight for layer {layer!r}; lam has {sorted(lam)}")
        return float(lam[layer])
    return float(lam)


def merge_lora_models(sd_fed: Mapping[str, Tensor], sd_loc: Mapping[str, Tensor],
                      lam: float | Mapping[str, float]) -> dict[str, Tensor]:
    """Merge two C = 1 adaptor state dicts exactly in delta-W space: lam * dW_fed + (1 - lam) * dW_loc.

    Ranks are stacked, B = [lam B_F, (1 - lam) B_L], A = [A_F; A_L] (rank r_F + r_L), never
    averaging A and B separately (products of averages are not averages of products). Adaptor
    biases, norm adaptors and any other differing float entries are interpolated linearly (exact,
    since the output is linear in them); identical entries (a shared frozen base) are kept as is.
    `lam` is a scalar or a dict keyed by layer path (the name before `.lora_A`). Both models must
    use the same alpha and conv variant.
    """
    if set(sd_fed) != set(sd_loc):
        raise ValueError(f"state dicts differ in keys: {sorted(set(sd_fed) ^ set(sd_loc))}")
    merged: dict[str, Tensor] = {}
    for name, fed in sd_fed.items():
        loc = sd_loc[name]
        layer, _, leaf = name.rpartition(".")
        if leaf == "lora_A":
            merged[name] = torch.cat([_check_c1(fed, name), _check_c1(loc, name)], dim=1)
        elif leaf == "lora_B":
            w = _layer_lam(lam, layer)
            merged[name] = torch.cat([w * _check_c1(fed, name), (1 - w) * _check_c1(loc, name)], dim=2)
        elif name.startswith("router.") or not torch.is_floating_point(fed) or (
            fed.shape == loc.shape and torch.equal(fed, loc)
        ):
            # With C = 1, pi = [1] whatever the logits, so the router has nothing to merge.
            merged[name] = fed
        else:
            w = _layer_lam(lam, layer) if leaf.startswith("lora_") else _scalar_or_fail(lam, name)
            merged[name] = w * fed + (1 - w) * loc
    return merged


def _check_c1(t: Tensor, name: str) -> Tensor:
    if t.shape[0] != 1:
        raise ValueError(f"{name} has {t.shape[0]} adaptors; rank stacking needs C = 1")
    return t


def _scalar_or_fail(lam: float | Mapping[str, float], name: str) -> float:
    if isinstance(lam, Mapping):
        raise ValueError(f"{name} differs between the models but is not an adaptor; give a scalar lam")
    return float(lam)


def load_merged(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of `model` whose parameters are replaced by `state` (shapes may differ: merged ranks grow).

    Forward passes infer the rank from the parameter shapes, so the copy runs as is; its layers'
    `rank` attribute is updated for display.
    """
    new = copy.deepcopy(model)
    for name, value in state.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = new.get_submodule(owner_name) if owner_name else new
        current = getattr(owner, leaf)
        if isinstance(current, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(value.detach().clone(), requires_grad=current.requires_grad))
        else:
            owner.register_buffer(leaf, value.detach().clone())
        if leaf == "lora_A" and hasattr(owner, "rank"):
            owner.rank = value.shape[1]
    return new
