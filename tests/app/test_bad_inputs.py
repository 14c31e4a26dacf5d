"""Every kind of bad input in docs/reliability.md: ``bouquet run`` prints one clear line and exits with status 2.

Each case builds its bad input in a temporary directory, runs ``bouquet.app.cli.main`` in-process and
checks the exit status, that the message names the field or file, and that no traceback is printed.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from bouquet.app.cli import main
from bouquet.app.config import load_experiment, resolved_dict
from bouquet.app.rundir import stamp, write_fingerprint
from bouquet.files import DirLock

BASE = """name = "t"
algorithms = ["fedavg"]
[data]
name = "synthetic_linear"
num_clients = 4
[model]
name = "linear"
[run]
rounds = 1
clients_per_round = 2
batch_size = 4
eval_every = 1
checkpoint_every = 0
[train]
lr = 0.1
"""


def _config(tmp: Path, text: str = BASE) -> str:
    path = tmp / "exp.toml"
    path.write_text(text)
    return str(path)


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


def _mnist_dir(tmp: Path, spoil: str = "") -> Path:
    """A tiny MNIST directory in the IDX format, spoiled in one way."""
    d = tmp / "mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        if spoil == "label" and prefix == "train":
            labels[3] = 12
        files = {f"{prefix}-images-idx3-ubyte": _idx(images), f"{prefix}-labels-idx1-ubyte": _idx(labels)}
        for name, data in files.items():
            if prefix == "train" and "images" in name:
                if spoil == "truncated":
                    data = data[: len(data) // 2]
                elif spoil == "magic":
                    data = b"\x00\x00\x09\x03" + data[4:]
                elif spoil == "missing":
                    continue
                elif spoil == "gzip":
                    (d / (name + ".gz")).write_bytes(gzip.compress(data)[:-30])
                    continue
            (d / name).write_bytes(data)
    return d


def _cifar_dir(tmp: Path, spoil: str) -> Path:
    d = tmp / "cifar"
    d.mkdir()
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(20)]}
        raw = pickle.dumps(batch)
        if f == "data_batch_2":
            raw = {"truncated": raw[: len(raw) // 3], "garbage": b"not a pickle at all",
                   "list": pickle.dumps([1, 2, 3])}[spoil]
        (d / f).write_bytes(raw)
    return d


def _run_dir_with_checkpoint(tmp: Path) -> Path:
    d = tmp / "old"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "fedavg-seed0-r0000003.ckpt").write_bytes(b"x")
    return d


def _non_utf8_config(tmp: Path) -> list[str]:
    (tmp / "exp.toml").write_bytes(b"\xff\xfe[data]")
    return ["run", str(tmp / "exp.toml")]


def _edited_run_dir(tmp: Path) -> list[str]:
    """A run directory whose config.toml was edited after the run started (model and rounds changed)."""
    d = _run_dir_with_checkpoint(tmp)
    exp = load_experiment(_config(tmp))
    write_fingerprint(d, stamp(resolved_dict(exp)))
    (d / "config.toml").write_text(tomli_w.dumps(resolved_dict(exp)).replace("rounds = 1", "rounds = 5")
                                   .replace('name = "linear"', 'name = "mlp"'))
    return ["run", "--resume", str(d)]


def _busy_run_dir(tmp: Path) -> list[str]:
    """A directory another process is writing to (here: a lock this test process holds until it ends)."""
    d = tmp / "busy"
    d.mkdir()
    _HELD.append(DirLock(d).acquire())
    return ["run", _config(tmp), "--out", str(d)]


_HELD: list[DirLock] = []


def _resume_with_engine(tmp: Path) -> list[str]:
    (tmp / "config.toml").write_text(BASE)
    return ["run", "--resume", str(tmp), "--engine", "flower-sim"]


# (id, argv builder, text the one-line message must contain)
Case = tuple[str, Callable[[Path], list[str]], str]
CASES: list[Case] = [
    # config files
    ("config file missing", lambda t: ["run", str(t / "nope.toml")], "config file not found"),
    ("config is a directory", lambda t: ["run", str(t)], "is a directory"),
    ("empty config file", lambda t: ["run", _config(t, "")], "data: missing required table [data]"),
    ("TOML syntax error", lambda t: ["run", _config(t, BASE + "lr = \n")], "not valid TOML"),
    ("config not UTF-8", _non_utf8_config, "cannot read as a UTF-8 TOML file"),
    ("unknown top-level key", lambda t: ["run", _config(t, "colour = 1\n" + BASE)], "colour: unknown top-level key"),
    ("unknown [run] key", lambda t: ["run", _config(t), "--set", "run.roundz=3"], "run.roundz: unknown option"),
    ("wrong type", lambda t: ["run", _config(t), "--set", 'run.rounds="ten"'], "run.rounds: expected an integer"),
    ("float for an integer", lambda t: ["run", _config(t), "--set", "run.batch_size=2.5"],
     "run.batch_size: expected an integer"),
    ("rounds 0", lambda t: ["run", _config(t), "--set", "run.rounds=0"], "run.rounds: expected an integer >= 1"),
    ("more clients per round than clients", lambda t: ["run", _config(t), "--set", "run.clients_per_round=5"],
     "run.clients_per_round: expected at most data.num_clients (4)"),
    ("negative learning rate", lambda t: ["run", _config(t), "--set", "train.lr=-0.1"],
     "train.lr: expected a number > 0"),
    ("NaN learning rate", lambda t: ["run", _config(t), "--set", "train.lr=nan"], "train.lr: expected a finite number"),
    ("server momentum >= 1", lambda t: ["run", _config(t), "--set", "server.momentum=1.5"], "server.momentum"),
    ("unknown server optimizer", lambda t: ["run", _config(t), "--set", 'server.optimizer="lbfgs"'],
     "server.optimizer: expected 'sgd' or 'adam'"),
    ("empty seed list", lambda t: ["run", _config(t), "--set", "run.seeds=[]"], "run.seeds"),
    ("negative checkpoint interval", lambda t: ["run", _config(t), "--set", "run.checkpoint_every=-1"],
     "run.checkpoint_every: expected an integer >= 0"),
    ("unknown algorithm in config", lambda t: ["run", _config(t, BASE.replace('["fedavg"]', '["fedsgd"]'))],
     "algorithms: unknown algorithm 'fedsgd'"),
    ("options for an unknown algorithm", lambda t: ["run", _config(t, BASE + "[algo.fedsgd]\nlr = 1\n")],
     "algo.fedsgd: unknown algorithm"),
    ("unknown algorithm option", lambda t: ["run", _config(t), "--set", "algo.floral.bogus=1"],
     "algo.floral.bogus: unknown option"),
    ("adaptor rank 0", lambda t: ["run", _config(t), "--algorithms", "floral", "--set", "algo.floral.rank=0"],
     "algo.floral.rank: expected a budget in (0, 1) or an integer rank >= 1"),
    ("adaptor rank of wrong type", lambda t: ["run", _config(t), "--set", 'algo.floral.rank="big"'],
     "algo.floral.rank: expected a number"),
    ("robust aggregation unknown", lambda t: ["run", _config(t), "--set", 'robust.aggregation="krum"'],
     "robust.aggregation: expected one of"),
    ("trimmed-mean fraction 0.5", lambda t: ["run", _config(t), "--set", "robust.trim_fraction=0.5"],
     "robust.trim_fraction: expected a number in [0, 0.5)"),
    # command line
    ("no config and no --resume", lambda t: ["run"], "CONFIG: expected an experiment TOML file"),
    ("--algorithms unknown", lambda t: ["run", _config(t), "--algorithms", "fedavg,fedsgd"],
     "--algorithms: unknown algorithm 'fedsgd'"),
    ("--set without =", lambda t: ["run", _config(t), "--set", "run.rounds"], "expected key=value"),
    ("--set below a value", lambda t: ["run", _config(t), "--set", "run.rounds.x=1"], "rounds is not a table"),
    ("--seeds not integers", lambda t: ["run", _config(t), "--seeds", "a,b"], "run.seeds"),
    ("--resume of a missing directory", lambda t: ["run", "--resume", str(t / "nope")], "no such run directory"),
    ("--resume with --engine", _resume_with_engine, "drop --engine"),
    ("--resume with a config", lambda t: ["run", _config(t), "--resume", str(t)], "drop CONFIG"),
    ("--out holding an earlier run", lambda t: ["run", _config(t), "--out", str(_run_dir_with_checkpoint(t))],
     "holds checkpoints of an earlier run"),
    # models and adaptors
    ("unknown model", lambda t: ["run", _config(t), "--set", 'model.name="resnet"'], "model.name: expected one of"),
    ("unknown model option", lambda t: ["run", _config(t), "--set", "model.depth=3"], "model.depth: unknown option"),
    ("model width 0", lambda t: ["run", _config(t), "--set", 'model.name="mlp"', "--set", "model.hidden=0"],
     "model.hidden: expected an integer >= 1"),
    ("dropout >= 1", lambda t: ["run", _config(t), "--set", 'model.name="vgg8"', "--set", "model.dropout=1.5"],
     "model.dropout: expected a number in [0, 1)"),
    ("image model on vector data", lambda t: ["run", _config(t), "--set", 'model.name="cifar_cnn"'],
     "model.name: 'cifar_cnn' cannot be built"),
    ("adaptor target matching nothing", lambda t: ["run", _config(t), "--algorithms", "floral", "--set",
                                                   'algo.floral.target_modules=["nothing"]'],
     "algo.floral: no module matched target_modules=['nothing']"),
    ("CUDA without a GPU", lambda t: ["run", _config(t), "--set", 'run.device="cuda"'], "run.device: expected"),
    ("unknown device", lambda t: ["run", _config(t), "--set", 'run.device="tpu"'], "run.device: expected"),
    # data
    ("unknown dataset", lambda t: ["run", _config(t), "--set", 'data.name="emnist"'], "data.name: expected one of"),
    ("unknown data option", lambda t: ["run", _config(t), "--set", "data.colour=1"], "data.colour: unknown option"),
    ("more clusters than clients", lambda t: ["run", _config(t), "--set", "data.num_clusters=9"],
     "data.num_clusters: expected at most num_clients"),
    ("more clients than rows", lambda t: ["run", _config(t), "--set", 'data.name="digits"', "--set",
                                          "data.num_clients=2000", "--set", "run.clients_per_round=2"],
     "data.num_clients: 2000 clients for only 1797 rows"),
    ("data directory missing", lambda t: ["run", _config(t), "--set", 'data.name="fashion_mnist"', "--set",
                                          f'data.path="{t / "nope"}"'], "not found; expected a directory"),
    ("data path is a file", lambda t: ["run", _config(t), "--set", 'data.name="mnist"', "--set",
                                       f'data.path="{_config(t)}"'], "expected a directory of IDX files"),
    ("IDX file missing", lambda t: ["run", _config(t), "--set", 'data.name="mnist"', "--set",
                                    f'data.path="{_mnist_dir(t, "missing")}"'], "train-images-idx3-ubyte[.gz]"),
    ("IDX file truncated", lambda t: ["run", _config(t), "--set", 'data.name="mnist"', "--set",
                                      f'data.path="{_mnist_dir(t, "truncated")}"'], "size mismatch"),
    ("IDX wrong magic number", lambda t: ["run", _config(t), "--set", 'data.name="mnist"', "--set",
                                          f'data.path="{_mnist_dir(t, "magic")}"'], "wrong magic number"),
    ("IDX .gz truncated", lambda t: ["run", _config(t), "--set", 'data.name="mnist"', "--set",
                                     f'data.path="{_mnist_dir(t, "gzip")}"'], "cannot read IDX file"),
    ("label out of range", lambda t: ["run", _config(t), "--set", 'data.name="mnist"', "--set",
                                      f'data.path="{_mnist_dir(t, "label")}"'], "label 12 outside 0..9"),
    ("CIFAR pickle truncated", lambda t: ["run", _config(t), "--set", 'data.name="cifar10"', "--set",
                                          f'data.path="{_cifar_dir(t, "truncated")}"'],
     "data_batch_2: cannot unpickle"),
    ("CIFAR file not a pickle", lambda t: ["run", _config(t), "--set", 'data.name="cifar10"', "--set",
                                           f'data.path="{_cifar_dir(t, "garbage")}"'], "data_batch_2: cannot unpickle"),
    ("CIFAR pickle of the wrong kind", lambda t: ["run", _config(t), "--set", 'data.name="cifar10"', "--set",
                                                  f'data.path="{_cifar_dir(t, "list")}"'], "unpickled a list"),
    # repeated runs
    ("repeated seed", lambda t: ["run", _config(t), "--seeds", "0,1,0"],
     "run.seeds: expected distinct seeds (a repeated seed repeats the same run), got [0, 1, 0]"),
    ("repeated seed in config", lambda t: ["run", _config(t), "--set", "run.seeds=[3, 3]"],
     "run.seeds: expected distinct seeds"),
    ("repeated algorithm", lambda t: ["run", _config(t), "--algorithms", "fedavg,local,fedavg"],
     "--algorithms: 'fedavg' given twice; expected distinct algorithms"),
    ("repeated algorithm in config", lambda t: ["run", _config(t, BASE.replace('["fedavg"]', '["fedavg", "fedavg"]'))],
     "algorithms: 'fedavg' given twice"),
    # splits that leave a client without test rows, models that do not fit the input
    ("no test rows", lambda t: ["run", _config(t), "--set", "data.test_fraction=0"],
     "data.test_fraction: 0 leaves 4 of 4 clients (0, 1, 2, 3) without a test row (a client of 8 rows gets "
     "floor(8 x 0) = 0); expected at least 0.125 for this data, or data.test_per_client >= 1"),
    ("test fraction too small for a client", lambda t: ["run", _config(t), "--set", 'data.name="digits"', "--set",
                                                        "data.test_fraction=0.001"],
     "data.test_fraction: 0.001 leaves 4 of 4 clients (0, 1, 2, 3) without a test row"),
    ("zero test rows per client", lambda t: ["run", _config(t), "--set", "data.test_per_client=0"],
     "data.test_per_client: expected None or an integer >= 1 (every client needs a test row), got 0"),
    ("CNN on images too small for it", lambda t: ["run", _config(t), "--set", 'data.name="digits"', "--set",
                                                  'model.name="cifar_cnn"'],
     "model.name: 'cifar_cnn' cannot be built for 'digits': model 'cifar_cnn' needs images of at least 14x14 "
     "pixels (conv5x5, pool2, conv3x3, pool3), got input shape (1, 8, 8)"),
    # run names (they name the folder runs/<name>-<time>)
    # run directories
    ("--resume of an edited config.toml", _edited_run_dir,
     "config.toml no longer matches the run; changed: model.name, run.rounds (model.name 'linear' -> 'mlp', "
     "run.rounds 1 -> 5); restore model.name"),
    ("--allow-config-change of an unsafe key", lambda t: ["run", "--resume", str(t), "--allow-config-change",
                                                          "train.lr"],
     "--allow-config-change: 'train.lr' cannot change"),
    ("--allow-config-change without --resume", lambda t: ["run", _config(t), "--allow-config-change", "run.rounds"],
     "--allow-config-change: only with --resume RUN_DIR"),
    ("--out in use by another run", _busy_run_dir, "in use by another bouquet run (PID "),
    ("name escaping runs/", lambda t: ["run", _config(t, 'name = "../../escaped"\n' + BASE.split("\n", 1)[1])],
     "name: expected a run name (it names the folder runs/<name>-<time>) without path separators"),
    ("name with '..'", lambda t: ["run", _config(t, 'name = "a..b"\n' + BASE.split("\n", 1)[1])],
     "name: expected a run name (it names the folder runs/<name>-<time>) without '..', got 'a..b'"),
    ("name too long", lambda t: ["run", _config(t, f'name = "{"x" * 300}"\n' + BASE.split("\n", 1)[1])],
     "of at most 100 characters, got 300 characters"),
    ("empty name", lambda t: ["run", _config(t, 'name = " "\n' + BASE.split("\n", 1)[1])], "not empty"),
]


@pytest.mark.parametrize(("argv", "expected"), [pytest.param(a, e, id=i) for i, a, e in CASES])
def test_bad_input_is_one_clear_line(tmp_path: Path, capsys, argv, expected: str) -> None:
    if "CUDA" in expected and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main([*argv(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bouquet: error: "), err
    assert expected in lines[0], err
    assert "Traceback" not in err


def test_nan_features_are_rejected_by_the_dataset_check() -> None:
    """Data built through the Python API is checked too: NaN features name the client and split."""
    from bouquet.data import DataError, DataSpec, build_dataset

    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=4))
    data.clients[2].x_train[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN or Inf features"):
        data.check()


def test_the_simulator_checks_a_hand_built_dataset() -> None:
    """A dataset built by hand (labels beyond num_outputs, a client without test rows) fails at construction."""
    import dataclasses

    from bouquet.app.experiment import build_algorithm
    from bouquet.data import DataError, DataSpec, build_dataset
    from bouquet.engine.simulator import Simulator

    data = build_dataset(DataSpec(name="digits", num_clients=3))
    c = data.clients[1]
    bad = dataclasses.replace(data, clients=(data.clients[0], dataclasses.replace(c, y_train=c.y_train + 12),
                                             data.clients[2]))
    exp = _digits_exp()
    alg, _ = build_algorithm(exp, data, "fedavg", 0)
    with pytest.raises(DataError, match=r"client 1: y_train has labels outside \[0, 10\) \(label \d+; num_outputs"):
        Simulator(alg, bad, exp.run.spec())
    empty = dataclasses.replace(c, x_test=c.x_test[:0], y_test=c.y_test[:0], test_ids=c.test_ids[:0])
    with pytest.raises(DataError, match="client 1 is without test rows; expected at least one per client"):
        Simulator(alg, dataclasses.replace(data, clients=(data.clients[0], empty, data.clients[2])), exp.run.spec())


def _digits_exp():
    text = BASE.replace('name = "synthetic_linear"\nnum_clients = 4', 'name = "digits"\nnum_clients = 3')
    return load_experiment_text(text)


def load_experiment_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return load_experiment(_config(Path(d), text))


def test_a_model_that_does_not_fit_the_input_is_one_line() -> None:
    """The forward check in the experiment factory: a RuntimeError of the first forward pass -> ConfigError."""
    from torch import nn

    from bouquet.app.experiment import check_forward
    from bouquet.checks import ConfigError
    from bouquet.data import DataSpec, build_dataset

    exp = load_experiment_text(BASE)
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=4))
    with pytest.raises(ConfigError, match=r"model.name: 'linear' does not fit input shape \(10,\) of "
                                          r"'synthetic_linear' \(a forward pass on one example failed: mat1"):
        check_forward(exp, data, nn.Linear(3, 2))
    with pytest.raises(ConfigError, match=r"gives outputs of shape \(7,\); expected \(3,\)"):
        check_forward(exp, data, nn.Linear(10, 7))
    check_forward(exp, data, nn.Linear(10, 3))


def test_there_are_at_least_25_kinds() -> None:
    assert len(CASES) >= 25
