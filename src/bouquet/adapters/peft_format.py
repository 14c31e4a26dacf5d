"""peft's LoRA adapter format: write one personalized model as a directory ``PeftModel.from_pretrained`` loads.

Every bouquet adaptor layer is a sum of rank-r products, so its delta is one LoRA of a larger rank,
exactly: a FLoRAL mixture sum_c pi_c B_c A_c is ``B' A'`` with ``A' = [A_1; ...; A_C]`` and
``B' = [pi_1 B_1, ..., pi_C B_C]`` (rank C*r), its mixed bias ``sum_c pi_c b_c`` is ``lora_B``'s bias
(peft's ``lora_bias``), and a Potara merge is already rank-stacked (2r). peft scales a LoRA by
``lora_alpha / r``, so ``lora_alpha = alpha * r`` reproduces bouquet's ``alpha``. Whole modules a method
trains or replaces (a fresh classification head) go in ``modules_to_save``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..files import atomic_write_bytes
from .functional import mixed_bias, rank_scale, stacked_factors

ADAPTER_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"


@dataclass(frozen=True)
class LoraFactors:
    """One layer's delta as a single LoRA: ``alpha * (B @ A @ x + bias)``; A [R, in], B [out, R]."""

    A: Tensor
    B: Tensor
    bias: Tensor | None
    alpha: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


def collapse_mixture(lora_A: Tensor, lora_B: Tensor, pi: Tensor, lora_bias: Tensor | None, alpha: float
                     ) -> LoraFactors:
    """A mixture layer's delta under weights ``pi`` [C] as one LoRA of rank C*r (exact)."""
    a_cat, b_cat = stacked_factors(lora_A, lora_B)
    b_cat = b_cat * rank_scale(pi, lora_A.shape[1])
    return LoraFactors(a_cat.contiguous(), b_cat.contiguous(), mixed_bias(pi, lora_bias), float(alpha))


def write_peft_adapter(out_dir: str | Path, layers: Mapping[str, LoraFactors], *, base_model: str,
                       task_type: str, modules_to_save: Mapping[str, Mapping[str, Tensor]] | None = None) -> Path:
    """Write ``adapter_config.json`` (peft's own ``LoraConfig``) and ``adapter_model.safetensors``.

    ``layers`` maps module paths of the base model (as peft names them, without ``base_model.model.``)
    to their factors; ``modules_to_save`` maps a module path to its full state (e.g. a head's weight and
    bias). Ranks may differ per layer (``rank_pattern``). Files are written atomically.
    """
    from peft import LoraConfig
    from safetensors.torch import save

    if not layers:
        raise ValueError("write_peft_adapter: no LoRA layer to write")
    ranks = {name: f.rank for name, f in layers.items()}
    alphas = {name: f.alpha * f.rank for name, f in layers.items()}
    top_rank = max(ranks.values(), key=list(ranks.values()).count)
    top_alpha = max(alphas.values(), key=list(alphas.values()).count)
    with_bias = any(f.bias is not None for f in layers.values())
    saved = dict(modules_to_save or {})
    config = LoraConfig(
        r=top_rank, lora_alpha=top_alpha, target_modules=sorted(layers), lora_dropout=0.0, bias="none",
        lora_bias=with_bias, task_type=task_type, modules_to_save=sorted({n.rsplit(".", 1)[-1] for n in saved}) or None,
        rank_pattern={n: r for n, r in ranks.items() if r != top_rank},
        alpha_pattern={n: a for n, a in alphas.items() if a != top_alpha},
        base_model_name_or_path=base_model,
    )
    tensors: dict[str, Tensor] = {}
    for name, f in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = f.A
        tensors[f"base_model.model.{name}.lora_B.weight"] = f.B
        if with_bias:
            tensors[f"base_model.model.{name}.lora_B.bias"] = f.bias if f.bias is not None else torch.zeros(
                f.B.shape[0], dtype=f.B.dtype)
    for module, state in saved.items():
        for key, value in state.items():
            tensors[f"base_model.model.{module}.{key}"] = value
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().to(torch.float32).contiguous().cpu() for k, v in tensors.items()})
    atomic_write_bytes(out / ADAPTER_FILE, blob)
    cfg = config.to_dict()
    cfg["target_modules"] = sorted(layers)
    text = json.dumps(cfg, indent=2, sort_keys=True, default=_jsonable)
    atomic_write_bytes(out / CONFIG_FILE, text.encode())
    return out


def _jsonable(value):
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
