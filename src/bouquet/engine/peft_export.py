"""One client's personalized model as a peft adapter: its adaptor layers collapsed into single LoRAs.

The mixture weights a layer applies are read while the algorithm's own evaluation forward runs (a hook
on each adaptor layer), so what is exported is what bouquet scores, whatever the method computes pi
from (FLoRAL's router, a Potara merge's single adaptor, plain LoRA's pi = 1). Whole modules that peft
must replace (a sequence classifier's head, which transformers would otherwise initialise at random)
go in ``modules_to_save``, with their LoRA folded in, or as trained when a method trains the head whole
(``train_head``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..adapters import param_role
from ..adapters.layers import MixtureConv2d, MixtureLinear, MixtureNorm
from ..adapters.mixture import current_pi
from ..adapters.peft_format import LoraFactors, collapse_mixture, write_peft_adapter
from ..algorithms import Algorithm
from ..algorithms.contract import ClientStates, Params, ServerState
from ..checks import ConfigError


class ExportError(ConfigError):
    """A personalized model that is not one peft LoRA adapter (and why)."""


@dataclass(frozen=True)
class PeftExport:
    """What ``write_peft_adapter`` needs: LoRA layers and saved modules, named as in the base model."""

    layers: dict[str, LoraFactors]
    modules_to_save: dict[str, dict[str, Tensor]]
    base_model: str
    task_type: str


def hf_root(model: nn.Module) -> tuple[str, nn.Module]:
    """(prefix, module) of the transformers model inside a bouquet template."""
    for name, module in model.named_modules():
        if hasattr(module, "config") and hasattr(module, "save_pretrained"):
            return (name + "." if name else ""), module
    raise ExportError("export: the model has no Hugging Face transformers module ([model] name = \"hf\")")


def client_params(alg: Algorithm, server: ServerState, clients: ClientStates, client: int) -> Params:
    """Client ``client``'s personalized parameters (no gradient)."""
    if clients:
        num = next(iter(clients.values())).shape[0]
        if not 0 <= client < num:
            raise ExportError(f"--client: expected 0..{num - 1}, got {client}")
    state = {k: v[client] for k, v in clients.items()}
    with torch.no_grad():
        return alg.personalize(server, state)


def mixture_weights_seen(alg: Algorithm, params: Params, probe: Tensor) -> dict[str, Tensor]:
    """The pi every adaptor layer applies in the algorithm's evaluation forward on ``probe``."""
    seen: dict[str, list[Tensor]] = {}
    hooks = []
    for name, module in alg.model.named_modules():
        if isinstance(module, MixtureConv2d | MixtureNorm):
            raise ExportError(f"export: layer {name} is a {type(module).__name__}; peft export covers Linear LoRA")
        if isinstance(module, MixtureLinear):
            def hook(mod, args, name=name):
                seen.setdefault(name, []).append(current_pi(mod.context, mod.num_adaptors, args[0]).detach())
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), alg.mode(False):
            alg.apply(params, probe)
    finally:
        for h in hooks:
            h.remove()
    for name, calls in seen.items():
        if len(calls) != 1:
            raise ExportError(f"export: {alg.name}'s personalized model runs layer {name} {len(calls)} times (it "
                              "mixes several models' outputs); that is not one LoRA adapter")
    return {name: calls[0] for name, calls in seen.items()}


def peft_export(alg: Algorithm, params: Params, probe: Tensor) -> PeftExport:
    """Collapse every adaptor layer of the personalized ``params`` into one LoRA (exact)."""
    prefix, hf = hf_root(alg.model)
    pis = mixture_weights_seen(alg, params, probe)
    own = dict(alg.model.named_parameters())
    head = "classifier" if hasattr(hf, "classifier") else "score" if hasattr(hf, "score") else None
    head = head if getattr(hf.config, "num_labels", None) and head and not hasattr(hf, "lm_head") else None
    trained_head = f"{prefix}{head}." if head is not None else None  # a head trained whole (train_head)
    trained_base = sorted(k for k, v in params.items() if param_role(k) == "base" and k in own
                          and not torch.equal(v, own[k]) and not (trained_head and k.startswith(trained_head)))
    if trained_base:
        raise ExportError(f"export: {alg.name} trained base weights ({trained_base[0]}, ...); a peft adapter "
                          "carries adaptors only (train the base frozen, e.g. floral train_base = false)")
    layers, saved = {}, {}
    for name, module in alg.model.named_modules():
        if not isinstance(module, MixtureLinear):
            continue
        get = lambda key, name=name: params.get(f"{name}.{key}", own.get(f"{name}.{key}"))  # noqa: E731
        factors = collapse_mixture(get("lora_A"), get("lora_B"), pis[name], get("lora_bias"), module.alpha)
        path = name.removeprefix(prefix)
        if path == head:  # the head is replaced whole: fold its LoRA into it
            w = module.base.weight + factors.alpha * factors.B @ factors.A
            b = module.base.bias if module.base.bias is not None else torch.zeros(w.shape[0])
            if factors.bias is not None:
                b = b + factors.alpha * factors.bias
            saved[path] = {"weight": w, "bias": b}
        else:
            layers[path] = factors
    if head is not None and head not in saved:  # the head as loaded, or as trained whole
        saved[head] = {k: params.get(f"{prefix}{head}.{k}", v).detach()
                       for k, v in hf.get_submodule(head).state_dict().items()}
    ckpt = getattr(getattr(alg.model, "model", None), "checkpoint", None)
    base = ckpt.display if ckpt is not None else str(getattr(hf.config, "_name_or_path", ""))
    task = "SEQ_CLS" if head is not None else "CAUSAL_LM"
    return PeftExport(layers, saved, base, task)


def export_client(alg: Algorithm, server: ServerState, clients: ClientStates, client: int, probe: Tensor,
                  out_dir: str | Path) -> Path:
    """Write client ``client``'s personalized model as a peft adapter directory."""
    ex = peft_export(alg, client_params(alg, server, clients, client), probe)
    return write_peft_adapter(out_dir, ex.layers, base_model=ex.base_model, task_type=ex.task_type,
                              modules_to_save=ex.modules_to_save)


def is_hf_template(model: nn.Module) -> bool:
    """True when the algorithm's model wraps a transformers model (what peft adapters are made for)."""
    try:
        hf_root(model)
    except ExportError:
        return False
    return True


def export_every_client(alg: Algorithm, server: ServerState, clients: ClientStates, probe: Tensor,
                        directory: str | Path, num_clients: int) -> list[Path]:
    """Each client's personalized adapter under ``directory/client_<k>``; methods that have none (APFL) skip."""
    out = []
    for k in range(num_clients):
        try:
            out.append(export_client(alg, server, clients, k, probe, Path(directory) / f"client_{k}"))
        except ExportError:
            return out
    return out
