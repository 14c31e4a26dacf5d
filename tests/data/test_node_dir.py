"""Node data directories: ``bouquet partition`` writes them, a SuperNode reads them back (docs/flower.md)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bouquet.app.cli import main
from bouquet.app.config import load_experiment
from bouquet.app.experiment import dataset_for_seed
from bouquet.data.federated import DataError
from bouquet.data.node_dir import META, load_federation, load_node_dir, write_node_dirs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "synthetic_linear.toml"


@pytest.fixture(scope="module")
def data():
    return dataset_for_seed(load_experiment(CONFIG), 0)


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_partition_round_trips_every_client(tmp_path, data, fmt):
    dirs = write_node_dirs(data, tmp_path, 3, fmt)
    node = load_node_dir(dirs[1])
    assert node.ids == tuple(range(1, data.num_clients, 3)) and node.partition == (1, 3)
    assert node.num_clients == data.num_clients
    back = load_federation(dirs)
    assert back.num_clients == data.num_clients and back.objective == data.objective
    for a, b in zip(back.clients, data.clients, strict=True):
        for split in ("x_train", "y_train", "x_test", "y_test"):
            assert torch.equal(getattr(a, split), getattr(b, split))
        assert a.cluster == b.cluster
    assert torch.equal(back.info().train_sizes(), data.train_sizes())


def test_the_cli_writes_node_directories(tmp_path, capsys):
    assert main(["partition", str(CONFIG), "--nodes", "2", "--out", str(tmp_path)]) == 0
    assert "data-dir=" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-0", "node-1"]
    assert main(["partition", str(CONFIG), "--nodes", "99", "--out", str(tmp_path / "x")]) == 2
    assert "--nodes: expected 1..10" in capsys.readouterr().err


def test_bad_node_directories_are_one_line_naming_the_file(tmp_path, data):
    d = write_node_dirs(data, tmp_path, 2)[0]
    meta = json.loads((d / META).read_text())
    with pytest.raises(DataError, match="has no bouquet-node.json"):
        load_node_dir(tmp_path / "nowhere")
    (d / META).write_text(json.dumps({**meta, "objective": "ranking"}))
    with pytest.raises(DataError, match="objective: expected classification or regression"):
        load_node_dir(d)
    (d / META).write_text(json.dumps(meta))
    np.savez(d / "client-0.npz", x_train=np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match=r"client-0.npz: expected arrays .* missing y_train"):
        load_node_dir(d)
    (d / "client-0.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="client-0.npz: not a readable client file"):
        load_node_dir(d)
    with pytest.raises(DataError, match="each exactly once"):
        load_federation([d.parent / "node-1"])
