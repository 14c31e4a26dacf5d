"""Nodes serving their own data directories (``bouquet partition``), a server that never sees data (fast,
in-process Grid; the real-process version is in test_deployment.py)."""

import json
import shutil
import tomllib

import pytest
import torch
from flowerkit import SMALL, LoopbackGrid, idx_experiment
from flwr.app import Context, RecordDict

from bouquet.app.config import parse_experiment, with_run
from bouquet.app.experiment import dataset_for_seed
from bouquet.app.flower_apps import RECORD, clientapp
from bouquet.app.flower_apps import main as server_main
from bouquet.app.flower_export import node_client_state, node_personalized
from bouquet.app.flower_job import load_job
from bouquet.app.runner import run_one
from bouquet.checks import ConfigError
from bouquet.data.node_dir import write_node_dirs
from bouquet.engine.evaluation import score_params


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


def test_a_broken_node_directory_stops_the_run_with_its_reason(tmp_path):
    text = idx_experiment(tmp_path / "mnist")
    dirs = write_node_dirs(dataset_for_seed(parse_experiment(tomllib.loads(text)), 0), tmp_path / "nodes", 3)
    (dirs[2] / "client-2.npz").write_bytes(b"torn")
    rc = {"experiment": text, "algorithm": "floral", "seed": 0, "node-wait": 2.0}
    grid = LoopbackGrid(clientapp, rc, 3, node_configs=[{"data-dir": str(d)} for d in dirs])
    with pytest.raises(RuntimeError, match=r"node 102 cannot serve its clients: .*client-2.npz: not a readable"):
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))


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


def test_export_rebuilds_the_personalized_model_the_last_evaluation_scored(tmp_path, capsys):
    rc = {"experiment": SMALL.replace('algorithms = ["fedavg"]', 'algorithms = ["floral"]'), "algorithm": "floral",
          "seed": 0, "node-wait": 5.0, "run-id": "x"}
    nodes = [{"state-dir": str(tmp_path / f"node-{i}"), "partition-id": i, "num-partitions": 3} for i in range(3)]
    server_main(LoopbackGrid(clientapp, rc, 3, node_configs=nodes),
                Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    last = [json.loads(line.split(RECORD, 1)[1]) for line in capsys.readouterr().out.splitlines()
            if RECORD in line][-1]
    job = load_job(rc)
    for cid in (1, 4):  # node 1's clients
        params = node_personalized(rc, tmp_path / "node-1", cid)
        assert set(node_client_state(tmp_path / "node-1", cid)) <= set(job.initial_state(cid))
        with torch.no_grad(), job.alg.mode(False):
            s = score_params(job.alg, lambda cs: cs, {k: v.unsqueeze(0) for k, v in params.items()},
                             job.client_rows(cid)[1], torch.tensor([0]), vectorized=False)
        assert float(s.score[0]) == pytest.approx(last["eval"]["per_client"][cid], abs=1e-6)
    with pytest.raises(ConfigError, match="client 0 has no saved state"):
        node_client_state(tmp_path / "node-1", 0)
