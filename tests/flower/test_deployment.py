"""Real Flower processes on 127.0.0.1: a SuperLink and SuperNodes (insecure and TLS), and `flwr run .`
with the simulation runtime. Slow (every ClientApp message starts a Python process), so few rounds."""

import json
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from flowerkit import SMALL, idx_experiment

from bouquet.algorithms import ALGORITHMS
from bouquet.app.config import parse_experiment, with_run
from bouquet.app.experiment import data_for_seed, dataset_for_seed
from bouquet.app.flower_run import parse_output, write_app
from bouquet.app.runner import run_one
from bouquet.data import build_dataset
from bouquet.data.node_dir import write_node_dirs
from bouquet.flower.deploy import LocalFederation, make_node_keys, make_tls

pytestmark = pytest.mark.flower

REPO = Path(__file__).resolve().parents[2]
# floral is the acceptance algorithm; before it was registered this test used local_adaptor
FLORAL = "floral" if "floral" in ALGORITHMS else "local_adaptor"


def local_records(text: str, algorithm: str) -> list[dict]:
    exp = parse_experiment(tomllib.loads(text))
    return run_one(with_run(exp, seeds=[0]), build_dataset(data_for_seed(exp, 0)), algorithm, 0)[1]


def assert_same_metrics(flower: list[dict], local: list[dict]) -> None:
    assert [r["round"] for r in flower] == [r["round"] for r in local]
    for f, lo in zip(flower, local, strict=True):
        assert f["clients"] == lo["clients"]
        assert f["train_loss"] == pytest.approx(lo["train_loss"], abs=1e-4)
        assert ("eval" in f) == ("eval" in lo)
        if "eval" in lo:
            for key in ("mean", "std", "loss"):
                assert f["eval"][key] == pytest.approx(lo["eval"][key], abs=1e-4)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (a port of a stopped federation)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                out.append(cmd)
    return out


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """One SuperLink and 3 SuperNodes (partitions 0-2) for the module; every process stopped at the end."""
    fed = LocalFederation(tmp_path_factory.mktemp("federation"), num_supernodes=3)
    with fed:
        yield fed
    assert all(p.poll() is not None for p in fed.procs)
    assert not processes_mentioning(f"127.0.0.1:{fed.port}")


def test_floral_on_three_supernodes_matches_the_local_engine(federation, tmp_path):
    run_config = {"experiment": SMALL, "algorithm": FLORAL, "seed": 0, "out": str(tmp_path / "out"),
                  "round-timeout": 600.0}
    res = federation.run_app(write_app(tmp_path / "app", run_config), timeout=900)
    records, summary = parse_output(res.stdout)
    assert summary is not None, res.stdout[-3000:]
    assert_same_metrics(records, local_records(SMALL, FLORAL))
    # the router never left a SuperNode: no key of any message the server received is private
    private = load_private_keys(FLORAL)
    received = [k.removeprefix("metrics:") for k in summary["flower"]["received_keys"]]
    assert any(k.startswith("model.") or "lora" in k for k in received)
    assert not [k for k in received if k.startswith(private)]
    # per-client records name the node that served each client
    assert len(set(records[0]["nodes"].values())) == 3
    # the ServerApp also wrote the local engine's run directory
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["train_loss"] for line in lines] == [r["train_loss"] for r in records]
    assert FLORAL in json.loads((tmp_path / "out" / "summary.json").read_text())["algorithms"]


def test_floral_on_nodes_with_their_own_data_and_a_server_without_data(tmp_path):
    """Acceptance (issue 17): 3 SuperNodes, each with its own data directory (``bouquet partition``); the
    experiment's data path is deleted before the run, so the ServerApp cannot build the dataset."""
    text = idx_experiment(tmp_path / "mnist")
    exp = parse_experiment(tomllib.loads(text))
    data = dataset_for_seed(exp, 0)
    local = run_one(with_run(exp, seeds=[0]), data, "floral", 0)[1]
    dirs = write_node_dirs(data, tmp_path / "nodes", 3)
    shutil.rmtree(tmp_path / "mnist")
    run_config = {"experiment": text, "algorithm": "floral", "seed": 0, "round-timeout": 600.0}
    with LocalFederation(tmp_path / "fed", 3, node_configs=[{"data-dir": str(d)} for d in dirs]) as fed:
        res = fed.run_app(write_app(tmp_path / "app", run_config), timeout=900)
    records, summary = parse_output(res.stdout)
    assert summary is not None, res.stdout[-3000:]
    assert_same_metrics(records, local)
    assert len(set(records[0]["nodes"].values())) == 3


def load_private_keys(algorithm: str) -> tuple[str, ...]:
    from bouquet.app.flower_job import load_job

    return load_job({"experiment": SMALL, "algorithm": algorithm, "seed": 0}).alg.private_keys


def test_a_supernode_killed_in_round_two_does_not_stop_the_run(federation, tmp_path):
    """Node 2 serves client 2 (round 1) and client 5 (round 2): it dies right after its 2nd train message."""
    log = federation.logs / "supernode-2.log"
    before = log.read_text().count("Receiving: train message")
    killed = threading.Event()

    def watch():
        while not killed.is_set():
            if log.read_text().count("Receiving: train message") >= before + 2:
                federation.kill_supernode(2)
                killed.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_config = {"experiment": SMALL, "algorithm": FLORAL, "seed": 0, "set": "run.eval_every=3",
                  "round-timeout": 60.0}
    try:
        res = federation.run_app(write_app(tmp_path / "app", run_config), timeout=900)
    finally:
        killed.set()
        watcher.join()
    records, summary = parse_output(res.stdout)
    assert summary is not None, res.stdout[-3000:]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert "failed" not in records[0]
    assert 5 in records[1]["failed"]
    assert summary["flower"]["failed_updates"] >= 1
    assert "no reply for clients" in res.stdout  # logged
    assert records[2]["eval"]["missing"] == [2, 5]  # the dead node's clients cannot be scored


def test_tls_deployment_through_the_cli(tmp_path):
    """`bouquet run --engine flower --superlink NAME` against a TLS SuperLink (certificates made here)."""
    tls = make_tls(tmp_path / "certs")
    config = tmp_path / "small.toml"
    config.write_text(SMALL.replace("rounds = 3", "rounds = 1"))
    out = tmp_path / "run"
    with LocalFederation(tmp_path / "fed", num_supernodes=1, tls=tls) as fed:
        cmd = [str(Path(sys.executable).parent / "bouquet"), "run", str(config), "--engine", "flower",
               "--superlink", "bouquet", "--out", str(out), "--no-progress"]
        proc = subprocess.run(cmd, env=fed.env(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "--ssl-certfile" in " ".join(fed.superlink.args)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert_same_metrics(records, local_records(config.read_text(), "fedavg"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["algorithms"]["fedavg"]["per_seed"][0]["rounds"] == 1


def test_tls_and_supernode_authentication_refuse_an_unknown_node(tmp_path):
    """TLS and node key pairs: two registered SuperNodes run the federation; a third, whose public key was
    never registered, is refused by the SuperLink and never receives a message."""
    tls = make_tls(tmp_path / "certs")
    known, unknown = make_node_keys(tmp_path / "keys", 2), make_node_keys(tmp_path / "stranger", 1)[0]
    text = SMALL.replace("rounds = 3", "rounds = 1")
    with LocalFederation(tmp_path / "fed", 2, tls=tls, node_keys=known) as fed:
        stranger = fed.add_supernode(5, 6, key=unknown)
        res = fed.run_app(write_app(tmp_path / "app", {"experiment": text, "algorithm": "fedavg", "seed": 0}),
                          timeout=900)
        assert "--enable-supernode-auth" in " ".join(fed.superlink.args)
        assert all("--auth-supernode-private-key" in " ".join(p.args) for p in fed.supernodes)
        stranger.wait(timeout=120)  # refused: it exits (Flower exit code 305)
        stranger_log = (fed.logs / "supernode-5.log").read_text()
    records, summary = parse_output(res.stdout)
    assert summary is not None, res.stdout[-3000:]
    assert sorted(summary["flower"]["partition_of_node"].values()) == [0, 1]  # the stranger took no part
    assert "Receiving:" not in stranger_log, stranger_log[-2000:]
    assert "Failed to activate SuperNode" in stranger_log, stranger_log[-2000:]
    assert_same_metrics(records, local_records(text, "fedavg"))


def test_flwr_run_dot_with_the_simulation_runtime(tmp_path):
    """The repository is a Flower app: `flwr run .` (pyproject defaults: FedAvg on configs/synthetic_linear)."""
    with LocalFederation(tmp_path, simulation=True) as fed:
        res = fed.run_app(REPO, {"set": "run.rounds=2;run.eval_every=1;data.num_clients=4;run.clients_per_round=4",
                                 "out": str(tmp_path / "out")},
                          federation_config={"num-supernodes": 2, "client-resources-num-cpus": 1}, timeout=900)
    assert not processes_mentioning(f"127.0.0.1:{fed.port}")
    records, summary = parse_output(res.stdout)
    assert summary is not None, res.stdout[-3000:]
    assert summary["algorithm"] == "fedavg" and summary["rounds"] == 2
    raw = tomllib.loads((REPO / "configs" / "synthetic_linear.toml").read_text())
    raw["run"].update(rounds=2, eval_every=1, clients_per_round=4)
    raw["data"]["num_clients"] = 4
    import tomli_w

    assert_same_metrics(records, local_records(tomli_w.dumps(raw), "fedavg"))
    assert (tmp_path / "out" / "summary.json").is_file()
