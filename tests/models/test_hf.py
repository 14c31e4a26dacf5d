"""Hugging Face checkpoints as bouquet models: offline loading, one-line errors, one frozen base in memory,
and the stacked (vmapped) round equal to the client-by-client one."""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bouquet.app.config import parse_experiment
from bouquet.app.experiment import build_algorithm, dataset_for_seed
from bouquet.app.runner import simulator
from bouquet.models import build_model
from bouquet.models.hf import ModelPathError, linear_module_names, load_base
from hfkit import lm_experiment, token_data

transformers = pytest.importorskip("transformers")


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ModelPathError, match=r"model.path: .*nowhere does not exist"):
        build_model("hf", (8,), 64, path=str(tmp_path / "nowhere"), head="causal_lm")


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelPathError, match="has no config.json"):
        build_model("hf", (8,), 64, path=str(tmp_path), head="causal_lm")


def test_gguf_without_the_gguf_package(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelPathError, match="needs the PyPI package 'gguf'"):
        build_model("hf", (8,), 64, path=str(f), head="causal_lm")


def test_unknown_head(tiny_llama_dir):
    with pytest.raises(ModelPathError, match="model.head: expected one of"):
        build_model("hf", (8,), 64, path=tiny_llama_dir, head="seq2seq")


def test_tokenizer_model_mismatch(tiny_llama_dir):
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        build_model("hf", (8,), 32000, path=tiny_llama_dir, head="causal_lm")


def test_target_modules_matching_nothing_lists_linear_names(tiny_llama_dir):
    from bouquet.algorithms.lora import lora_model

    model = build_model("hf", (8,), 64, path=tiny_llama_dir, head="causal_lm")
    with pytest.raises(ValueError, match=r"nope.*hf\.model\.layers\.0\.self_attn\.q_proj \(Linear\)") as err:
        lora_model(model, 2, ["nope"])
    assert "Embedding" not in str(err.value) and "LlamaRMSNorm" not in str(err.value)
    assert "hf.model.layers.0.self_attn.q_proj" in linear_module_names(model)


def test_causal_lm_logits_are_the_checkpoints(tiny_llama_dir):
    model = build_model("hf", (8,), 64, path=tiny_llama_dir, head="causal_lm")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    x = torch.randint(0, 64, (3, 8))
    with torch.no_grad():
        assert torch.allclose(model(x), ref(input_ids=x).logits, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["fedit", "local_lora", "ditto"])
def test_stacked_round_equals_client_by_client(name, tiny_llama_dir):
    data = token_data("language_modeling", vocab=64)
    out = {}
    for vectorized in (True, False):
        sim, _ = simulator(parse_experiment(lm_experiment(tiny_llama_dir, name, 3, vectorized)), data, name, 0)
        state, _ = sim.run_round(sim.init_state())
        out[vectorized] = {**state.server["params"], **{f"c.{k}": v for k, v in state.clients.items()}}
    for k, v in out[True].items():
        assert torch.allclose(v, out[False][k], atol=1e-5), k
    assert any(float(v.abs().max()) > 0 for k, v in out[True].items() if k.endswith("lora_B"))


MEMORY_SCRIPT = textwrap.dedent("""
    import gc, json, sys, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from bouquet.app.config import parse_experiment
    from bouquet.app.runner import simulator
    from hfkit import lm_experiment, token_data

    def rss():
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    path = sys.argv[1]
    cfg = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    out = {}
    for k in (2, 202):
        data = token_data("language_modeling", vocab=8192, num_clients=k)
        before = rss()
        sim, _ = simulator(parse_experiment(lm_experiment(path, "local_lora", k)), data, "local_lora", 0)
        state = sim.init_state()
        out[k] = {"rss": rss() - before, "client_bytes": sum(v.numel() * v.element_size()
                                                             for v in state.clients.values())}
        out["model_bytes"] = sum(p.numel() * p.element_size() for p in sim.alg.model.parameters())
        out["adaptor_bytes"] = out[k]["client_bytes"] // k
        del sim, state, data
    print(json.dumps(out))
""")


def test_more_clients_cost_adaptors_not_model_copies(tmp_path):
    """200 more clients grow the process by about their adaptors, far less than one copy of the model."""
    import json

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, *sys.path])}
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "m")], capture_output=True, text=True,
                          env=env, timeout=600, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    model, adaptor = out["model_bytes"], out["adaptor_bytes"]
    assert out["202"]["client_bytes"] == 202 * adaptor  # a client's state is its adaptor tensors only
    growth = out["202"]["rss"] - out["2"]["rss"]
    assert adaptor * 200 < model / 4  # so that a single model copy would be visible
    assert growth < model / 2, f"200 clients grew RSS by {growth} B; a model copy is {model} B"
    gc.collect()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_classifier_padding_is_masked(attention, tiny_bert_dir):
    """Padding (-1) changes nothing: a padded text scores as the unpadded one, with either attention."""
    model = build_model("hf", (8,), 3, path=tiny_bert_dir, head="sequence_classification", attention=attention)
    x = torch.randint(0, 64, (2, 5))
    padded = torch.cat([x, torch.full((2, 3), -1)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(padded), model(x), atol=1e-5)


def test_adaptor_init_does_not_depend_on_an_earlier_load_in_the_process():
    """Loading the (cached) transformers model leaves the global RNG alone: the adaptors a seed draws are the
    same for the first algorithm of a process and for later ones (another method, or a Flower server and node
    in one process), and differ between seeds."""

    exp = parse_experiment({"name": "rng", "algorithms": ["fedit"],
                            "data": {"name": "text_tasks", "num_clients": 2, "num_clusters": 2, "tokenizer": "bundled",
                                     "max_tokens": 8, "train_per_client": 4, "test_per_client": 2},
                            "model": {"name": "hf", "head": "sequence_classification"},
                            "run": {"rounds": 1, "clients_per_round": 2, "batch_size": 2}, "train": {"lr": 0.1}})
    info = dataset_for_seed(exp, 0).info()

    def first_a(seed: int) -> torch.Tensor:
        alg, _ = build_algorithm(exp, info, "fedit", seed)
        params = alg.init(torch.Generator().manual_seed(seed), info.clusters)[0]["params"]
        return next(v for k, v in sorted(params.items()) if k.endswith("lora_A")).clone()

    load_base.cache_clear()  # the first load of this process
    first = first_a(3)
    assert torch.equal(first_a(3), first)  # the model is now cached: the same adaptors
    assert not torch.equal(first_a(4), first)
