"""``[init] peft_adapter = DIR``: a federated run that starts from an existing peft LoRA adapter.

The adapter's ``lora_A``/``lora_B`` replace the initial adaptors of every state that holds them (the
server's model, each client's local or personal copy; each FLoRAL component starts from it), rescaled
so that bouquet's ``alpha * B A`` equals peft's ``lora_alpha / r * B A``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..adapters.layers import MixtureLinear
from ..algorithms import Algorithm
from ..checks import ConfigError
from ..engine.peft_export import hf_root

PREFIX = "base_model.model."


@dataclass(frozen=True)
class InitConfig:
    """How the adaptors start (``[init]``)."""

    #: a peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors) whose A and B start
    #: the run's adaptors (none: bouquet's own initialisation)
    peft_adapter: str | None = None


def read_peft_adapter(path: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Module path -> (A [r, in], B [out, r] times peft's scaling lora_alpha / r) of a peft LoRA adapter."""
    from safetensors.torch import load_file

    d = Path(path)
    cfg_file, weights = d / "adapter_config.json", d / "adapter_model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise ConfigError(f"init.peft_adapter: {f} not found; expected a peft adapter directory")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"init.peft_adapter: {cfg_file} is a {cfg.get('peft_type')} adapter; expected LORA")
    tensors = load_file(weights)
    out = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix(PREFIX)
        b = tensors[f"{key[: -len('lora_A.weight')]}lora_B.weight"]
        r = a.shape[0]
        alpha = cfg.get("alpha_pattern", {}).get(module, cfg.get("lora_alpha", r))
        out[module] = (a, b * (alpha / cfg.get("rank_pattern", {}).get(module, r)))
    if not out:
        raise ConfigError(f"init.peft_adapter: {weights} holds no lora_A/lora_B tensors")
    return out


def with_initial_adaptors(alg: Algorithm, adapter: dict[str, tuple[Tensor, Tensor]], source: str) -> Algorithm:
    """``alg`` whose ``init`` puts the adapter's factors into every matching adaptor tensor."""
    layers = {n: m for n, m in alg.model.named_modules() if isinstance(m, MixtureLinear)}
    hf_prefix = hf_root(alg.model)[0]
    by_layer = {}
    for name, module in layers.items():
        path = name.removeprefix(hf_prefix)
        if path in adapter:
            a, b = adapter[path]
            if tuple(a.shape) != tuple(module.lora_A.shape[1:]) or tuple(b.shape) != tuple(module.lora_B.shape[1:]):
                raise ConfigError(f"init.peft_adapter: {source} has {path} with A {tuple(a.shape)}, B "
                                  f"{tuple(b.shape)}; expected A {tuple(module.lora_A.shape[1:])}, B "
                                  f"{tuple(module.lora_B.shape[1:])} (rank and targets must match the run's)")
            by_layer[name] = (a, b / module.alpha)
    if not by_layer:
        raise ConfigError(f"init.peft_adapter: no module of {source} ({sorted(adapter)[:4]} ...) is an adaptor "
                          f"layer of {alg.name} ({sorted(n.removeprefix(hf_prefix) for n in layers)[:4]} ...)")
    original = alg.init

    def put(tree: dict) -> dict:
        out = {}
        for key, value in tree.items():
            layer, _, kind = key.rpartition(".")
            match = next((n for n in by_layer if layer.endswith(n)), None)
            if match is not None and kind in ("lora_A", "lora_B") and isinstance(value, Tensor):
                new = by_layer[match][0 if kind == "lora_A" else 1].to(value.dtype)
                value = new.expand_as(value).clone()
            out[key] = put(value) if isinstance(value, dict) else value
        return out

    def init(gen: torch.Generator, clusters: Tensor):
        server, clients = original(gen, clusters)
        return put(server), put(clients)

    return dataclasses.replace(alg, init=init)
