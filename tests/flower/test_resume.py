"""Server checkpoints and node state directories (fast, in-process Grid): a ServerApp that stops after a
checkpoint and a new one resuming from it give the uninterrupted run's records; a node's state files."""

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from flowerkit import SMALL, LoopbackGrid
from flwr.app import Context, RecordDict

from bouquet.app.config import parse_experiment, with_run
from bouquet.app.experiment import data_for_seed
from bouquet.app.flower_apps import RECORD, SUMMARY, clientapp
from bouquet.app.flower_apps import main as server_main
from bouquet.app.runner import run_one
from bouquet.data import build_dataset
from bouquet.flower.deploy import LocalFederation
from bouquet.flower.node_state import DirStore, latest_states
from bouquet.flower.records import content_values


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
    rc = {"experiment": experiment(), "algorithm": "floral", "seed": 0, "node-wait": 5.0, "run-id": "r"}
    base, _ = serve(LoopbackGrid(clientapp, rc, 3), rc, capsys)
    states = [{"state-dir": str(tmp_path / f"node-{i}"), "partition-id": i, "num-partitions": 3} for i in range(3)]
    rc = {**rc, "checkpoint-dir": str(tmp_path / "ckpt")}

    def kill_in_round_three(node, msg):
        cfg = content_values(msg.content, "config")
        if cfg.get("server-round") == 3 and node == 101:
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


def _restart_node_after_round_two(grid, old: int, new: int):
    """A tamper hook: once node ``old`` has answered round 2's evaluation, it is gone and ``new`` (same node
    config, a fresh Context: a restarted SuperNode gets a new node id) has joined."""
    def tamper(reply):
        if reply.metadata.src_node_id == old and grid.last_eval.get(old) == 2:
            ctx = grid.contexts.pop(old)
            grid.contexts[new] = Context(run_id=1, node_id=new, node_config=dict(ctx.node_config), state=RecordDict(),
                                         run_config=dict(ctx.run_config))
    return tamper


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "flowers-loop"])
@pytest.mark.parametrize("state_dir", [True, False])
def test_a_restarted_supernode_rejoins_and_keeps_its_routers(tmp_path, capsys, state_dir, fold):
    rc = {"experiment": experiment(4), "algorithm": "floral", "seed": 0, "node-wait": 5.0, "run-id": "r",
          "fold-evaluation": fold}
    base, _ = serve(LoopbackGrid(clientapp, rc, 3), rc, capsys)
    configs = [{"partition-id": i, "num-partitions": 3, **({"state-dir": str(tmp_path / f"n{i}")} if state_dir else {})}
               for i in range(3)]
    grid = LoopbackGrid(clientapp, rc, 3, node_configs=configs)
    grid.tamper = _restart_node_after_round_two(grid, 102, 105)
    records, _ = serve(grid, rc, capsys)
    assert 105 in grid.contexts and 102 not in grid.contexts
    # folded, round 2's evaluation came with round 3's training: the new node first trains in round 4
    moved = {(c, n) for c, n in records[3 if fold else 2]["nodes"].items() if int(c) % 3 == 2}
    assert moved and moved <= {("2", 105), ("5", 105)}
    assert all("failed" not in r for r in records)
    same = all(a["eval"]["per_client"] == pytest.approx(b["eval"]["per_client"], abs=1e-6)
               for a, b in zip(records, base, strict=True))
    assert same == state_dir  # without a state directory the new process starts its clients' routers afresh


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


def _train_messages(fed) -> int:
    return sum(p.read_text().count("Receiving: train message") for p in fed.logs.glob("supernode-*.log"))


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


@pytest.mark.flower
def test_killed_superlink_and_supernode_resume_to_the_uninterrupted_metrics(tmp_path):
    """Acceptance (issue 17): the SuperLink (with its ServerApp) is killed in round 3 of 6, so is SuperNode 2;
    both restart (node 2 with its state directory) and ``bouquet run --resume`` ends with the metrics of an
    uninterrupted run: the server continued from its round-2 checkpoint, node 2 with its clients' routers."""
    text = experiment().replace("eval_every = 1", "eval_every = 3")  # fewer ClientApp processes: evaluate at 3, 6
    config = tmp_path / "six.toml"
    config.write_text(text)
    exp = parse_experiment(tomllib.loads(text))
    local = run_one(with_run(exp, seeds=[0]), build_dataset(data_for_seed(exp, 0)), "floral", 0)[1]
    states = [{"state-dir": str(tmp_path / "state" / f"node-{i}")} for i in range(3)]
    run = tmp_path / "run"
    bouquet = str(Path(sys.executable).parent / "bouquet")
    with LocalFederation(tmp_path / "fed", 3, node_configs=states, database=True) as fed:
        cmd = [bouquet, "run", str(config), "--engine", "flower", "--superlink", fed.address, "--out", str(run),
               "--no-progress"]
        with open(tmp_path / "first.log", "wb") as out:
            first = subprocess.Popen(cmd, env=fed.env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: (run / "checkpoints" / "floral-seed0-r0000002.ckpt").is_file(), 600, "no round-2 checkpoint")
            seen = _train_messages(fed)
            _wait(lambda: _train_messages(fed) > seen, 120, "round 3 did not start")
            fed.kill_superlink()
            fed.kill_supernode(2)
            assert first.wait(timeout=120) != 0
        finally:
            if first.poll() is None:
                first.kill()
        assert not (run / "summary.json").is_file() or "floral" not in (run / "summary.json").read_text()
        fed.start_superlink()
        fed.add_supernode(2, 3, index=2)
        res = subprocess.run([bouquet, "run", "--resume", str(run), "--no-progress"], env=fed.env(),
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, 7))
    for f, lo in zip(records, local, strict=True):
        assert f["clients"] == lo["clients"]
        assert f["train_loss"] == pytest.approx(lo["train_loss"], abs=1e-4)
        assert ("eval" in f) == ("eval" in lo)
        if "eval" in lo:
            assert f["eval"]["per_client"] == pytest.approx(lo["eval"]["per_client"], abs=1e-4)
    # node 2 (clients 2 and 5) went on from the routers it had saved before it was killed
    store = DirStore(next((tmp_path / "state" / "node-2").iterdir()))
    later = [store.read(c, r)["origin"] for c in (2, 5) for r in store.versions(c) if r >= 3]
    assert later and any(o >= 1 for o in later)


@pytest.mark.flower
def test_flower_sim_run_keeps_node_states_in_the_run_directory_and_resumes_when_finished(tmp_path):
    """``--engine flower-sim``: simulated nodes keep their clients' states under RUN_DIR/node-state; resuming a
    finished run reads the final server checkpoint back (same records, nothing recomputed)."""
    config = tmp_path / "small.toml"
    config.write_text(experiment(2))
    run = tmp_path / "run"
    bouquet = str(Path(sys.executable).parent / "bouquet")
    first = subprocess.run([bouquet, "run", str(config), "--engine", "flower-sim", "--out", str(run), "--no-progress"],
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    records = (run / "metrics.jsonl").read_text()
    exp = parse_experiment(tomllib.loads(config.read_text()))
    local = run_one(with_run(exp, seeds=[0]), build_dataset(data_for_seed(exp, 0)), "floral", 0)[1]
    assert [json.loads(line)["eval"]["mean"] for line in records.splitlines()] == pytest.approx(
        [r["eval"]["mean"] for r in local], abs=1e-5)
    states = run / "node-state"
    assert list(states.glob("partition-*/*/c*-r*.ckpt"))  # clients' states, per simulated node
    assert len(list(states.glob("partition-*/*/server.ckpt"))) == exp.data.num_clients  # every node evaluated
    again = subprocess.run([bouquet, "run", "--resume", str(run), "--no-progress"], capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert (run / "metrics.jsonl").read_text() == records
