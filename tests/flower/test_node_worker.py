"""Long-lived node workers with real Flower processes, both ways: a ``bouquet node-worker`` process beside each
``flower-supernode --isolation process``, and the worker as a thread of ``bouquet supernode --worker``. A run
computes the local engine's numbers, and a worker outlives a ClientApp that raised. One federation per way: its
workers serve both tests' runs (two FABs) without restarting."""

import time

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


@pytest.fixture(scope="module", params=["worker-process", "worker-in-node"])
def federation(request, tmp_path_factory):
    in_node = request.param == "worker-in-node"
    fed = LocalFederation(tmp_path_factory.mktemp("workers"), num_supernodes=3, workers=True, worker_in_node=in_node)
    with fed:
        yield fed
    assert all(p.poll() is not None for p in fed.procs)


def _task_log(fed: LocalFederation, i: int) -> str:
    """Node i's worker lines: the worker's own log, or its SuperNode's when the worker is a thread of it."""
    return (fed.logs / (f"supernode-{i}.log" if fed.worker_in_node else f"worker-{i}.log")).read_text()


def _serving_pids(fed: LocalFederation) -> list[int]:
    return sorted(p.pid for p in (fed.supernodes if fed.worker_in_node else fed.workers))


def test_floral_with_node_workers_matches_the_local_engine(federation, tmp_path):
    run_config = {"experiment": TEXT, "algorithm": "floral", "seed": 0, "round-timeout": 600.0}
    res = federation.run_app(write_app(tmp_path / "app", run_config), timeout=600)
    records, summary = parse_output(res.stdout)
    assert summary is not None, res.stdout[-3000:]
    assert_same_metrics(records, local_records(TEXT, "floral"))
    assert len(set(records[0]["nodes"].values())) == 3
    # every ClientApp task ran in the node's one worker: no SuperNode started a process of its own
    flag = "--worker" if federation.worker_in_node else "--isolation process"
    assert all(flag in " ".join(p.args) for p in federation.supernodes)
    assert all(process_tree(p.pid) == [p.pid] for p in federation.supernodes)
    assert federation.worker_in_node == (federation.workers == [None] * 3)
    for i in range(3):
        log = _task_log(federation, i)
        assert "(train): completed" in log and "(evaluate): completed" in log, log[-2000:]
        if federation.worker_in_node:  # the thread called its node's handlers, no HTTP between them
            assert "Runtime API handlers called in-process" in log, log[:2000]


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
    before = _serving_pids(federation)
    res = federation.run_app(app, timeout=300)
    errors = [line for line in res.stdout.splitlines() if "probe-error" in line]
    pids = sorted(int(line.split("probe-pid", 1)[1]) for line in res.stdout.splitlines() if "probe-pid" in line)
    assert len(errors) == 3 and all("boom on purpose" in e for e in errors), res.stdout[-3000:]
    assert pids == before  # the next message was served by the same (long-lived) worker processes
    time.sleep(0.5)
    assert all(p.poll() is None for p in [*federation.supernodes, *filter(None, federation.workers)])
    log = _task_log(federation, 0)
    assert "ClientApp raised an exception" in log and "RuntimeError: boom on purpose" in log


def test_a_tasks_first_heartbeat_is_skipped_the_later_ones_sent():
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatResponse  # pylint: disable=E0611

    from bouquet.flower.node_worker import _heartbeat

    class Client:
        beats = 0

        def SendTaskHeartbeat(self, req):  # noqa: N802 (Flower's name)
            Client.beats += 1
            return SendTaskHeartbeatResponse(success=True)

    beat = _heartbeat(Client())
    assert beat() and Client.beats == 0  # due when the task starts, right after its claim: not sent
    assert beat() and beat() and Client.beats == 2
