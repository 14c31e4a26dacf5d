"""Config validation: every error names the key and what was expected."""

import pytest

from bouquet.app.config import (
    ConfigError,
    apply_overrides,
    load_experiment,
    load_raw,
    parse_experiment,
    resolved_dict,
)

BASE = {
    "name": "t",
    "algorithms": ["fedavg"],
    "data": {"name": "digits", "num_clients": 4},
    "model": {"name": "mlp", "hidden": 8},
    "run": {"rounds": 2, "clients_per_round": 2, "batch_size": 8},
    "train": {"lr": 0.1},
}


def _with(path: str, value):
    return apply_overrides(BASE, [f"{path}={value}"])


def test_valid_config_parses_and_resolves():
    exp = parse_experiment(BASE)
    assert exp.run.rounds == 2 and exp.train.lr == 0.1 and exp.server.optimizer == "sgd"
    assert exp.model.options == {"hidden": 8}
    resolved = resolved_dict(exp)
    assert resolved["run"]["eval_every"] == 10  # defaults filled in
    assert parse_experiment(resolved).run == exp.run


@pytest.mark.parametrize(("path", "value", "key"), [
    ("run.rouns", "3", "run.rouns"),
    ("run.rounds", "'ten'", "run.rounds"),
    ("run.rounds", "0", "run.rounds"),
    ("run.clients_per_round", "9", "run.clients_per_round"),
    ("run.batch_size", "1.5", "run.batch_size"),
    ("run.vectorized", "1", "run.vectorized"),
    ("run.engine", "'mpi'", "run.engine"),
    ("train.lr", "-0.1", "train.lr"),
    ("train.momentun", "0.9", "train.momentun"),
    ("server.optimizer", "'yogi'", "server.optimizer"),
    ("server.momentum", "1.0", "server.momentum"),
    ("data.nmae", "'x'", "data.nmae"),
    ("data.num_clients", "0", "data.num_clients"),
    ("data.fraction", "1.5", "data.fraction"),
    ("model.hiden", "3", "model.hiden"),
    ("model.name", "'resnet'", "model.name"),
    ("algo.fedavg_ft.epochs", "0", "algo.fedavg_ft.epochs"),
    ("algo.nope.x", "1", "algo.nope"),
    ("extra", "1", "extra"),
])
def test_bad_values_name_the_key(path, value, key):
    with pytest.raises(ConfigError) as err:
        parse_experiment(_with(path, value))
    assert str(err.value).startswith(key), str(err.value)


def test_unknown_algorithm_is_named():
    raw = dict(BASE, algorithms=["fedavg", "fedprox2"])
    with pytest.raises(ConfigError, match="fedprox2"):
        parse_experiment(raw)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nrounds = 3")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_experiment(bad)


def test_every_shipped_config_is_valid():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").rglob("*.toml"))
    assert configs
    for path in configs:
        raw = load_raw(path)
        if raw["data"]["name"] in ("mnist", "cifar10", "cifar100") and "path" not in raw["data"]:
            raw = apply_overrides(raw, ["data.path='/user/supplied/dir'"])  # these need the user's files
        parse_experiment(raw)
