"""Fixtures shared across test packages: tiny random Hugging Face checkpoints written to disk."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A Llama-architecture causal LM with random weights (vocab 64, 2 layers), saved as a checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)

@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A BERT encoder with random weights (vocab 64, 2 layers), saved as a checkpoint."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertModel(cfg).save_pretrained(path)
    return str(path)
