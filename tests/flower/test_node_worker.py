"""Long-lived node workers (``bouquet node-worker`` beside ``flower-supernode --isolation process``) with real
Flower processes: a run computes the local engine's numbers, and a worker outlives a ClientApp that raised.
One federation for the module: its workers serve both tests' runs (two FABs) without restarting."""

import time
from pathlib import Path

import pytest
import tomli_w
from flowerkit import SMALL
from test_deployment import assert_same_metrics, local_records

from bouquet.app.flower_run import parse_output, write_app
from bouquet.flower.deploy import LocalFederation, process_tree

pytestmark = pytest.mark.flower

TEXT = SMALL.replace("rounds = 3", "rounds = 2").replace("eval_every = 1", "eval_every = 2")

# a ClientApp that raises when told to, answering with its process id otherwise; its ServerApp sends every
# node a "boom" train message, then a normal one, and prints what came back
PROBE = '''
import os
import time

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

clientapp = ClientApp()
serverapp = ServerApp()


@clientapp.train()
def train(msg, context):
    if msg.content["config"]["boom"]:
        raise RuntimeError("boom on purpose")
    return Message(RecordDict({"metrics": MetricRecord({"pid": os.getpid()})}), reply_to=msg)


@serverapp.main()
def main(grid, context):
    deadline = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    for boom in (1, 0):
        msgs = [Message(RecordDict({"config": ConfigRecord({"boom": boom})}), dst_node_id=n, message_type="train")
                for n in sorted(grid.get_node_ids())]
        for rep in grid.send_and_receive(msgs, timeout=120):
            if rep.has_error():
                print("probe-error", rep.error.reason, flush=True)
            else:
                print("probe-pid", int(rep.content["metrics"]["pid"]), flush=True)
'''


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = LocalFederation(tmp_path_factory.mktemp("workers"), num_supernodes=3, workers=True)
    with fed:
        yield fed
    assert all(p.poll() is not None for p in fed.procs)


def test_floral_with_node_workers_matches_the_local_engine(federation, tmp_path):
    run_config = {"experiment": TEXT, "algorithm": "floral", "seed": 0, "round-timeout": 600.0}
    res = federation.run_app(write_app(tmp_path / "app", run_config), timeout=600)
    records, summary = parse_output(res.stdout)
    assert summary is not None, res.stdout[-3000:]
    assert_same_metrics(records, local_records(TEXT, "floral"))
    assert len(set(records[0]["nodes"].values())) == 3
    # every ClientApp task ran in the node's one worker: no SuperNode started a process of its own
    assert all("--isolation process" in " ".join(p.args) for p in federation.supernodes)
    assert all(process_tree(p.pid) == [p.pid] for p in federation.supernodes)
    for i in range(3):
        log = (federation.logs / f"worker-{i}.log").read_text()
        assert "(train): completed" in log and "(evaluate): completed" in log, log[-2000:]


def test_a_worker_survives_a_clientapp_that_raises(federation, tmp_path):
    app = tmp_path / "probe"
    app.mkdir()
    (app / "worker_probe.py").write_text(PROBE)
    project = {"name": "worker-probe", "version": "1.0.0", "description": "probe", "license": "Apache-2.0",
               "dependencies": []}
    components = {"serverapp": "worker_probe:serverapp", "clientapp": "worker_probe:clientapp"}
    (app / "pyproject.toml").write_text(tomli_w.dumps({
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": project, "tool": {"flwr": {"app": {"publisher": "bouquet", "components": components}}}}))
    before = [w.pid for w in federation.workers]
    res = federation.run_app(app, timeout=300)
    errors = [line for line in res.stdout.splitlines() if "probe-error" in line]
    pids = sorted(int(line.split("probe-pid", 1)[1]) for line in res.stdout.splitlines() if "probe-pid" in line)
    assert len(errors) == 3 and all("boom on purpose" in e for e in errors), res.stdout[-3000:]
    assert pids == sorted(before)  # the next message was served by the same (long-lived) worker processes
    time.sleep(0.5)
    assert all(w.poll() is None for w in federation.workers)
    log = Path(federation.logs / "worker-0.log").read_text()
    assert "ClientApp raised an exception" in log and "RuntimeError: boom on purpose" in log
