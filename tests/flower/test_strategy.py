"""BouquetStrategy + ClientApp over an in-process Grid: equivalence with the local engine, privacy,
rejection of bad replies, failed nodes and the minimum number of replies (fast; no processes)."""

import math
import tomllib

import pytest
import torch
from flowerkit import SMALL, LoopbackGrid
from flwr.app import MessageType
from flwr.serverapp.strategy import Result

from bouquet.algorithms import ALGORITHMS
from bouquet.app.config import parse_experiment, with_run
from bouquet.app.experiment import data_for_seed
from bouquet.app.flower_apps import clientapp as client_app
from bouquet.app.flower_job import load_job
from bouquet.app.runner import run_one
from bouquet.data import build_dataset
from bouquet.flower.records import add_client, content_values, from_record, pack
from bouquet.flower.strategy import BouquetStrategy, NodeDiscoveryError

FLORAL = "floral" if "floral" in ALGORITHMS else "local_adaptor"


def run_flower(algorithm: str, num_nodes: int = 3, fold: bool = True, **grid_options):
    rc = {"experiment": SMALL, "algorithm": algorithm, "seed": 0, "min-replies": grid_options.pop("min_replies", 1),
          "fold-evaluation": fold}
    grid = LoopbackGrid(client_app, rc, num_nodes, **grid_options)
    strategy = BouquetStrategy(load_job(rc))
    result = strategy.start(grid)
    assert isinstance(result, Result) and len(result.train_metrics_clientapp) == strategy.job.spec.rounds
    return strategy, strategy.log.records, grid


def run_local(algorithm: str):
    exp = parse_experiment(tomllib.loads(SMALL))
    data = build_dataset(data_for_seed(exp, 0))
    return run_one(with_run(exp, seeds=[0]), data, algorithm, 0)[1]


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "flowers-loop"])
@pytest.mark.parametrize("algorithm", ["fedavg", "local", FLORAL, "fedavg_ft", "floral_em_revive"])
def test_same_metrics_as_local_sequential_engine(algorithm, fold):
    _, flower, _ = run_flower(algorithm, fold=fold)
    local = run_local(algorithm)
    assert len(flower) == len(local) == 3
    for f, lo in zip(flower, local, strict=True):
        assert f["clients"] == lo["clients"]
        assert f["train_loss"] == pytest.approx(lo["train_loss"], abs=1e-4)
        assert f["client_train_loss"] == pytest.approx(lo["client_train_loss"], abs=1e-4)
        for key in ("mean", "std", "loss"):
            assert f["eval"][key] == pytest.approx(lo["eval"][key], abs=1e-4)
        assert f["eval"]["per_client"] == pytest.approx(lo["eval"]["per_client"], abs=1e-4)
        assert f["bytes_total"] == lo["bytes_total"]
        assert "failed" not in f and "rejected" not in f


def test_private_state_stays_on_the_nodes():
    strategy, _, grid = run_flower(FLORAL)
    prefixes = strategy.job.alg.private_keys
    assert prefixes
    arrays = [k for k in strategy.received_keys if not k.startswith("metrics:")]
    assert arrays, "the server received no upload at all"
    assert not [k for k in strategy.received_keys for p in prefixes if k.split(":")[-1].startswith(p)]
    # ... while each node keeps its clients' private entries in Context.state, one slice per client
    node0 = grid.contexts[100].state
    assert {"c0", "c3"} <= set(node0.keys())
    assert any(k.startswith(prefixes) for k in from_record(node0["c0"]))


def _corrupt(reply):
    """NaN for the first client of a reply, a wrong shape for the second, a missing key for the third."""
    if reply.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return
    ups = from_record(reply.content["arrays"])
    cids = sorted({int(k.split("/")[0][1:]) for k in ups})
    for i, cid in enumerate(cids[:3]):
        keys = sorted(k for k in ups if k.startswith(f"c{cid}/"))
        if i == 0:
            ups[keys[0]] = torch.full_like(ups[keys[0]], math.nan)
        elif i == 1:
            ups[keys[0]] = torch.zeros(7)
    reply.content["arrays"] = pack(ups, content_values(reply.content, "metrics"))


def test_bad_replies_are_rejected_never_aggregated():
    strategy, records, _ = run_flower("fedavg", num_nodes=1, tamper=_corrupt)
    for rec in records:
        assert len(rec["rejected"]) == 2
        reasons = list(rec["rejected_reasons"].values())
        assert any("NaN" in r for r in reasons) and any("shape" in r for r in reasons)
    params = strategy.state.server["params"]
    assert all(bool(torch.isfinite(v).all()) for v in params.values())


def test_missing_and_unexpected_keys_are_rejected():
    def tamper(reply):  # first client: one key dropped; second client: a router entry added
        if reply.metadata.message_type != MessageType.TRAIN:
            return
        ups = from_record(reply.content["arrays"])
        cids = sorted({int(k.split("/")[0][1:]) for k in ups})
        del ups[sorted(k for k in ups if k.startswith(f"c{cids[0]}/"))[0]]
        ups.update(add_client({"router.logits": torch.zeros(2)}, cids[1]))
        reply.content["arrays"] = pack(ups, content_values(reply.content, "metrics"))

    _, records, _ = run_flower("fedavg", num_nodes=1, tamper=tamper)
    reasons = sorted(records[0]["rejected_reasons"].values())
    assert len(reasons) == 2
    assert reasons[0].startswith("missing keys") and reasons[1].startswith("unexpected keys")


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "flowers-loop"])
def test_failed_node_is_counted_and_the_round_continues(fold):
    def fail(node, msg):  # node 101 is down for the messages of server round 2
        cfg = content_values(msg.content, "config")
        return node == 101 and "server-round" in cfg and cfg["server-round"] == 2

    _, records, _ = run_flower("fedavg", fold=fold, fail=fail)
    failed = records[1]["failed"]
    assert failed and all(c % 3 == 1 for c in failed)  # clients of partition 1
    # folded, round 2's train message carried round 1's evaluation; Flower's loop evaluates round 2 in round 2
    lost, kept = (0, 1) if fold else (1, 0)
    assert records[lost]["eval"]["missing"] == [1, 4] and "missing" not in records[kept]["eval"]
    assert math.isfinite(records[1]["train_loss"]) and "failed" not in records[2]


def test_too_few_replies_skip_the_round_and_keep_the_server_state():
    strategy, records, _ = run_flower("fedavg", min_replies=5)  # 4 clients per round < 5
    assert all(r.get("skipped") for r in records)
    fresh = BouquetStrategy(load_job({"experiment": SMALL, "algorithm": "fedavg", "seed": 0}))
    for k, v in fresh.state.server["params"].items():
        assert torch.equal(strategy.state.server["params"][k], v)


def test_discovery_fails_when_a_partition_has_no_node():
    rc = {"experiment": SMALL, "algorithm": "fedavg", "seed": 0, "node-wait": 1.0}
    grid = LoopbackGrid(client_app, rc, 3, fail=lambda node, msg: node == 102)
    with pytest.raises(NodeDiscoveryError, match="partitions"):
        BouquetStrategy(load_job(rc)).discover(grid)


def test_bouquets_nodes_share_one_train_content_pushed_once():
    """Packed train messages to several bouquet nodes carry one content (the same Flower object ids), so the
    SuperLink receives the payload once; each node still trains only the clients named for it."""
    sent = []

    class Recording(LoopbackGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            sent.append(messages)
            return super().send_and_receive(messages, timeout=timeout)

    rc = {"experiment": SMALL, "algorithm": "fedavg", "seed": 0, "fold-evaluation": True}
    strategy = BouquetStrategy(load_job(rc))
    strategy.start(Recording(client_app, rc, 3))
    train = [m for m in sent[1] if m.metadata.message_type == MessageType.TRAIN]
    assert len(train) == 3
    assert len({m.content.object_id for m in train}) == 1
    assert len({m.object_id for m in train}) == 3  # one message per node all the same
    cfg = content_values(train[0].content, "config")
    assert sorted(c for cs in cfg["clients"].values() for c in cs) == sorted(cfg["sampled"])
