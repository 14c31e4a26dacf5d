"""Nodes serving their own data directories (``bouquet partition``), a server that never sees data (fast,
in-process Grid; the real-process version is in test_deployment.py)."""

import json
import shutil
import tomllib

import pytest
from flowerkit import LoopbackGrid, idx_experiment
from flwr.app import Context, RecordDict

from bouquet.app.config import parse_experiment, with_run
from bouquet.app.experiment import dataset_for_seed
from bouquet.app.flower_apps import clientapp
from bouquet.app.flower_apps import main as server_main
from bouquet.app.runner import run_one
from bouquet.data.node_dir import write_node_dirs


def same(flower: list[dict], local: list[dict]) -> None:
    assert [r["clients"] for r in flower] == [r["clients"] for r in local]
    for f, lo in zip(flower, local, strict=True):
        assert f["train_loss"] == pytest.approx(lo["train_loss"], abs=1e-5)
        for key in ("mean", "std", "loss"):
            assert f["eval"][key] == pytest.approx(lo["eval"][key], abs=1e-5)
        assert f["eval"]["per_client"] == pytest.approx(lo["eval"]["per_client"], abs=1e-5)


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_server_without_data_matches_the_local_engine_on_the_partition(tmp_path, fmt):
    text = idx_experiment(tmp_path / "mnist")
    exp = parse_experiment(tomllib.loads(text))
    data = dataset_for_seed(exp, 0)
    local = run_one(with_run(exp, seeds=[0]), data, "floral", 0)[1]
    dirs = write_node_dirs(data, tmp_path / "nodes", 3, fmt)
    shutil.rmtree(tmp_path / "mnist")  # the experiment's data path no longer exists: only the nodes have data
    rc = {"experiment": text, "algorithm": "floral", "seed": 0, "out": str(tmp_path / "out"), "node-wait": 5.0}
    grid = LoopbackGrid(clientapp, rc, 3, node_configs=[{"data-dir": str(d)} for d in dirs])
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    same(records, local)
    assert {int(n) for n in records[0]["nodes"].values()} <= set(grid.contexts)
    # each node kept its own clients' routers, and only those
    kept = set(grid.contexts[100].state.keys())
    assert kept and kept <= {"c0", "c3"}


def test_a_node_directory_of_another_federation_is_refused(tmp_path):
    text = idx_experiment(tmp_path / "mnist")
    exp = parse_experiment(tomllib.loads(text))
    dirs = write_node_dirs(dataset_for_seed(exp, 0), tmp_path / "nodes", 3)
    rc = {"experiment": text.replace("num_clients = 6", "num_clients = 4").replace("clients_per_round = 4",
                                                                                     "clients_per_round = 2"),
          "algorithm": "floral", "seed": 0, "node-wait": 2.0}
    grid = LoopbackGrid(clientapp, rc, 3, node_configs=[{"data-dir": str(d)} for d in dirs])
    with pytest.raises(RuntimeError, match="not clients of the experiment"):
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
