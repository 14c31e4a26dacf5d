"""Injection: wrap the matching layers of a copy of the user's model and attach a router."""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from torch import Tensor, nn

from .layers import NORM_TYPES, MixtureConv2d, MixtureLinear, MixtureNorm
from .mixture import MixtureContext, MixtureModel, Router

ADAPTOR_TYPES = (MixtureLinear, MixtureConv2d, MixtureNorm)
Role = Literal["base", "adaptor", "router"]


def name_matches(name: str, pattern: str) -> bool:
    """True if `pattern` is the module's name, a dotted suffix of it, an fnmatch glob or a full regex."""
    if name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(name_matches(name, p) for p in patterns)


def _as_patterns(patterns: str | Iterable[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def inject(
    model: nn.Module,
    *,
    num_adaptors: int,
    rank: float | int,
    target_modules: str | Iterable[str] | None = None,
    target_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    exclude: str | Iterable[str] = (),
    alpha: float = 1.0,
    adaptor_bias: bool = False,
    init_bias: str = "zeros",
    conv_variant: str = "balanced_2d",
    norm_adaptors: bool = False,
    paper_conv_rank_bug: bool = False,
    router: Router | None = None,
) -> MixtureModel:
    """Return a MixtureModel around a deep copy of `model` with C adaptors on every matching layer.

    A layer is targeted when it is an instance of `target_types` (plus BatchNorm/LayerNorm/GroupNorm
    with `norm_adaptors`), its name matches one of `target_modules` (exact, dotted suffix, glob or
    regex; None = every layer of those types, final classifier included) and none of `exclude`.
    `rank` is an integer rank or a budget rho < 1, resolved per layer. The user's model is untouched;
    its frozen parameters (requires_grad False) are shared with the copy rather than duplicated.
    """
    targets = _as_patterns(target_modules)
    excluded = _as_patterns(exclude) or []
    types = tuple(target_types) + (NORM_TYPES if norm_adaptors else ())
    if router is None:
        router = Router(num_adaptors)
    elif router.num_adaptors != num_adaptors:
        raise ValueError(f"router has {router.num_adaptors} adaptors but num_adaptors={num_adaptors}")

    # Frozen tensors (a pretrained base) are shared with the user's model, not copied: a template over a
    # 135M-parameter transformer then costs its adaptors only.
    copied = copy.deepcopy(model, memo={id(p): p for p in model.parameters() if not p.requires_grad})
    # The root itself may be a target (e.g. the model is a bare nn.Linear); its name is "".
    candidates = [(n, m) for n, m in copied.named_modules() if not isinstance(m, ADAPTOR_TYPES)]
    # A module nested inside an existing adaptor layer (its `base`) is never wrapped again.
    inside = {f"{n}.{sub}" if n else sub for n, m in copied.named_modules() if isinstance(m, ADAPTOR_TYPES)
              for sub, _ in m.named_modules() if sub}
    chosen = [
        (n, m) for n, m in candidates
        if n not in inside and isinstance(m, types)
        and (targets is None or _matches_any(n, targets)) and not _matches_any(n, excluded)
    ]
    if not chosen:
        available = [f"{n or '<root>'} ({type(m).__name__})" for n, m in candidates if isinstance(m, types)]
        shown = available if len(available) <= 60 else [*available[:60], f"... {len(available) - 60} more"]
        raise ValueError(
            f"no module matched target_modules={targets} with target_types="
            f"{[t.__name__ for t in types]} and exclude={excluded}; the model's modules of those types: {shown}"
        )

    context = MixtureContext()
    common = {"num_adaptors": num_adaptors, "context": context}
    for name, module in chosen:
        if isinstance(module, nn.Linear):
            new: nn.Module = MixtureLinear(module, rank=rank, alpha=alpha, adaptor_bias=adaptor_bias,
                                           init_bias=init_bias, **common)
        elif isinstance(module, nn.Conv2d):
            new = MixtureConv2d(module, rank=rank, alpha=alpha, adaptor_bias=adaptor_bias,
                                init_bias=init_bias, variant=conv_variant,
                                paper_conv_rank_bug=paper_conv_rank_bug, **common)
        elif isinstance(module, NORM_TYPES):
            new = MixtureNorm(module, **common)
        else:
            raise NotImplementedError(f"no adaptor for {name} ({type(module).__name__}); "
                                      "supported: Linear, Conv2d, BatchNorm, LayerNorm, GroupNorm")
        if name:
            _set_submodule(copied, name, new)
        else:
            copied = new
    return MixtureModel(copied, router, context)


def param_role(name: str) -> Role:
    """'adaptor' for `...lora_*`, 'router' for `router.*`, else 'base' (names as in MixtureModel)."""
    parts = name.split(".")
    if parts[-1].startswith("lora_"):
        return "adaptor"
    if parts[0] == "router":
        return "router"
    return "base"


def split_params(params: Mapping[str, Tensor]) -> dict[Role, dict[str, Tensor]]:
    """Split a flat parameter dict into {'base': ..., 'adaptor': ..., 'router': ...}."""
    out: dict[Role, dict[str, Tensor]] = {"base": {}, "adaptor": {}, "router": {}}
    for name, value in params.items():
        out[param_role(name)][name] = value
    return out


def freeze_base(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Set requires_grad=False (or back to True) on every base parameter; returns the model."""
    for name, p in model.named_parameters():
        if param_role(name) == "base":
            p.requires_grad_(not frozen)
    return model


def adaptor_parameter_count(model: nn.Module) -> int:
    """Number of adaptor parameters (all C adaptors of every layer; router and base excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if param_role(n) == "adaptor")
