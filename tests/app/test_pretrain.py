"""The [pretrain] stage: public rows disjoint from every client, config validation, disk cache."""

from dataclasses import replace

import pytest
import torch

from bouquet.app.config import ConfigError, parse_experiment
from bouquet.app.pretrain import _CACHE, load_pretrained, public_rows, public_split
from bouquet.data import build_dataset
from bouquet.data.federated import DataError
from bouquet.data.sources import load_source
from bouquet.models import build_model

RAW = {
    "name": "p",
    "data": {"name": "digits", "num_clients": 4, "train_per_client": 30, "test_per_client": 20},
    "model": {"name": "mlp", "hidden": 16},
    "run": {"rounds": 1, "clients_per_round": 4, "batch_size": 16},
    "train": {"lr": 0.1},
    "pretrain": {"rows": 500, "epochs": 3, "lr": 0.2, "batch_size": 32},
}


def test_public_rows_are_disjoint_from_every_client():
    exp = parse_experiment(RAW)
    data = build_dataset(exp.data)
    ids = public_rows(data, exp.pretrain)
    client_ids = torch.cat([torch.cat([c.train_ids, c.test_ids]) for c in data.clients])
    assert len(ids) == 500 and len(set(ids.tolist())) == 500
    assert not set(ids.tolist()) & set(client_ids.tolist())
    x, y = public_split(data, exp.pretrain)
    assert x.shape == (500, 1, 8, 8) and torch.equal(y, load_source("digits").gather(ids)[1])
    with pytest.raises(DataError, match="pretrain.rows"):
        public_rows(data, replace(exp.pretrain, rows=5000))


def test_pretraining_learns_and_is_cached_on_disk(tmp_path):
    raw = {**RAW, "pretrain": {**RAW["pretrain"], "save": str(tmp_path)}}
    exp = parse_experiment(raw)
    data = build_dataset(exp.data)
    torch.manual_seed(0)
    model = load_pretrained(build_model("mlp", data.input_shape, data.num_outputs, hidden=16), exp, data)
    x, y = public_split(data, exp.pretrain)
    assert float((model(x).argmax(1) == y).float().mean()) > 0.5
    files = list(tmp_path.glob("pretrain-*.pt"))
    assert len(files) == 1
    _CACHE.clear()
    again = load_pretrained(build_model("mlp", data.input_shape, data.num_outputs, hidden=16), exp, data)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_fedavg_mode_runs():
    exp = parse_experiment({**RAW, "pretrain": {**RAW["pretrain"], "mode": "fedavg", "clients": 4, "rounds": 8,
                                                "epochs": 2}})
    data = build_dataset(exp.data)
    model = load_pretrained(build_model("mlp", data.input_shape, data.num_outputs, hidden=16), exp, data)
    x, y = public_split(data, exp.pretrain)
    assert float((model(x).argmax(1) == y).float().mean()) > 0.3


def test_pretrain_options_are_validated():
    with pytest.raises(ConfigError, match="pretrain.mode"):
        parse_experiment({**RAW, "pretrain": {"mode": "magic"}})
    with pytest.raises(ConfigError, match="pretrain.bogus"):
        parse_experiment({**RAW, "pretrain": {"bogus": 1}})


def test_global_rng_after_loading_does_not_depend_on_the_cache():
    exp = parse_experiment({**RAW, "pretrain": {**RAW["pretrain"], "seed": 3}})
    data = build_dataset(exp.data)
    draws = []
    for _ in range(2):  # trained the first time, cached the second
        torch.manual_seed(0)
        load_pretrained(build_model("mlp", data.input_shape, data.num_outputs, hidden=16), exp, data)
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])
