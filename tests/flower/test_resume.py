"""Server checkpoints and node state directories (fast, in-process Grid): a ServerApp that stops after a
checkpoint and a new one resuming from it give the uninterrupted run's records; a node's state files."""

import json

import pytest
import torch
from flowerkit import SMALL, LoopbackGrid
from flwr.app import Context, RecordDict

from bouquet.app.flower_apps import RECORD, SUMMARY, clientapp
from bouquet.app.flower_apps import main as server_main
from bouquet.flower.node_state import DirStore, latest_states

def experiment(rounds: int = 6) -> str:
    text = SMALL.replace("rounds = 3", f"rounds = {rounds}\ncheckpoint_every = 2")
    return text.replace('algorithms = ["fedavg"]', 'algorithms = ["floral"]')


def serve(grid, rc, capsys) -> tuple[list[dict], dict | None]:
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    out = capsys.readouterr().out
    records = [json.loads(line.split(RECORD, 1)[1]) for line in out.splitlines() if RECORD in line]
    summary = next((json.loads(line.split(SUMMARY, 1)[1]) for line in out.splitlines() if SUMMARY in line), None)
    return records, summary


class Stop(Exception):
    """Stands for the ServerApp's process being killed."""


def test_a_server_killed_in_round_three_resumes_to_the_same_metrics(tmp_path, capsys):
    rc = {"experiment": experiment(), "algorithm": "floral", "seed": 0, "node-wait": 5.0}
    base, _ = serve(LoopbackGrid(clientapp, rc, 3), rc, capsys)
    states = [{"state-dir": str(tmp_path / f"node-{i}"), "partition-id": i, "num-partitions": 3} for i in range(3)]
    rc = {**rc, "checkpoint-dir": str(tmp_path / "ckpt")}

    def kill_in_round_three(node, msg):
        cfg = msg.content.get("config")
        if cfg is not None and cfg.get("server-round") == 3 and node == 101:
            raise Stop  # node 100 has trained round 3 already: its round-3 state files must not be used
        return False

    with pytest.raises(Stop):
        serve(LoopbackGrid(clientapp, rc, 3, fail=kill_in_round_three, node_configs=states), rc, capsys)
    assert capsys.readouterr().out.count(RECORD) == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["floral-seed0-r0000002.ckpt"]
    # a new "process": fresh node Contexts (a new Flower run), the same state directories
    records, summary = serve(LoopbackGrid(clientapp, rc, 3, node_configs=states), rc, capsys)
    assert [r["round"] for r in records] == list(range(1, 7))
    for a, b in zip(records, base, strict=True):
        assert a["clients"] == b["clients"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["eval"]["per_client"] == pytest.approx(b["eval"]["per_client"], abs=1e-6)
    assert summary is not None and summary["rounds"] == 6
    # a finished run resumed again recomputes nothing
    again, summary2 = serve(LoopbackGrid(clientapp, rc, 3, fail=lambda n, m: True), rc, capsys)
    assert again == records and summary2 == summary


def test_node_state_directory_keeps_versions_and_exports_the_newest(tmp_path):
    store = DirStore(tmp_path)
    for rnd in (1, 2, 4):
        store.put(0, rnd, {"router": torch.full((2,), float(rnd))}, rnd - 1, keep_from=2)
    assert store.versions(0) == [2, 4]  # versions at or before the checkpoint: the newest only
    assert store.get(0, before=4)[1] == 2 and store.get(0, before=5)[1] == 4
    store.put(0, 3, {"router": torch.zeros(2)}, 2, keep_from=2)  # a replayed round 3 drops round 4
    assert store.versions(0) == [2, 3]
    assert torch.equal(latest_states(tmp_path)[0]["router"], torch.zeros(2))
    (tmp_path / "c0-r0000003.ckpt").write_bytes(b"torn")
    assert store.get(0, before=9)[1] == 2  # a corrupt file falls back to the previous version
