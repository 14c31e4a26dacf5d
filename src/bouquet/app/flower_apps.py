"""bouquet's Flower ``ServerApp`` and ``ClientApp`` (named in ``[tool.flwr.app.components]``).

Both build their ``FlowerJob`` from the run config (``flower_job``) and hand it to the translation
layer (``bouquet.flower``). Outputs of the ServerApp: every round record and the final summary as
``bouquet-record {json}`` / ``bouquet-summary {json}`` log lines (``flwr run --stream`` and ``flwr log``
carry them to the user, wherever the SuperLink runs), and with ``out`` set the simulator's run directory
(config.toml, metrics.jsonl, summary.json) on the ServerApp's machine.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..engine.checkpoint import CheckpointDir
from ..engine.summary import aggregate_seeds, summary
from ..files import atomic_write_json, atomic_write_toml, write_jsonl
from ..flower.client import evaluate_reply, query_reply, train_reply
from ..flower.discovery import discover
from ..flower.grid import prompt
from ..flower.job import FlowerJob
from ..flower.node_state import store_for
from ..flower.records import content_values
from ..flower.strategy import BouquetStrategy
from .experiment import dataset_for_seed
from .flower_job import experiment_of, load_job, node_dir, node_job, run_name, server_job, settings

RECORD, SUMMARY, FAILURE = "bouquet-record ", "bouquet-summary ", "bouquet-failure "
log = logging.getLogger("bouquet.flower")

serverapp = ServerApp()
clientapp = ClientApp()


def _threads(context: Context, key: str) -> None:
    torch.set_num_threads(int(context.run_config.get(key, 1)))


def _data_dir(context: Context) -> str | None:
    path = context.node_config.get("data-dir")
    return str(path) if path else None


def client_job(msg: Message, context: Context) -> FlowerJob:
    """This node's job: from its own data directory (``data-dir`` node config) or from the experiment."""
    path = _data_dir(context)
    if path is None:
        return load_job(dict(context.run_config), context.run_id)
    nd = node_dir(path, context.run_id)
    cfg = content_values(msg.content, "config")
    num = int(cfg.get("num-clients", nd.num_clients if nd.num_clients is not None else max(nd.ids) + 1))
    total = int(cfg.get("total-examples", nd.data.total_train_examples()))
    return node_job(dict(context.run_config), path, num, total, context.run_id)


@clientapp.query()
def _query(msg: Message, context: Context) -> Message:
    path = _data_dir(context)
    if path is None:
        return query_reply(msg, context, load_job(dict(context.run_config), context.run_id).data)
    nd = node_dir(path, context.run_id)
    part = None if "partition-id" in context.node_config else nd.partition
    return query_reply(msg, context, nd.data, nd.ids, part)


@clientapp.train()
def _train(msg: Message, context: Context) -> Message:
    _threads(context, "client-threads")
    return train_reply(msg, context, client_job(msg, context),
                       store_for(context, run_name(dict(context.run_config), context.run_id)))


@clientapp.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    _threads(context, "client-threads")
    return evaluate_reply(msg, context, client_job(msg, context),
                          store_for(context, run_name(dict(context.run_config), context.run_id)))


class RunFailedError(RuntimeError):
    """Every round of a Flower run failed: nothing was ever aggregated."""

    user_facing = True


def failure(records: list[dict], min_replies: int) -> str | None:
    """Why a run in which no round aggregated anything failed (None when some round did)."""
    if records and not all(r.get("skipped") for r in records):
        return None
    rejected = sum(len(r.get("rejected", [])) for r in records)
    missing = sum(len(r.get("failed", [])) for r in records)
    return (f"every round failed: nothing was aggregated in {len(records)} rounds ({rejected} updates rejected, "
            f"{missing} without a reply, min-replies {min_replies})")


def run_summary(job: FlowerJob, strategy: BouquetStrategy, wall: float) -> dict:
    """The simulator's per-(algorithm, seed) summary plus a ``flower`` section."""
    out = summary(job.alg, job.seed, strategy.log, strategy.state, strategy.counts, wall,
                  "sequential (on the SuperNodes)")
    records = strategy.log.records
    out["flower"] = {
        "failed_updates": sum(len(r.get("failed", [])) for r in records),
        "skipped_rounds": [r["round"] for r in records if r.get("skipped")],
        "received_keys": sorted(strategy.received_keys),
        "partition_of_node": {str(n): p for n, p in sorted(strategy.partitions.items())},
    }
    return out


def write_run_dir(out: str | Path, job: FlowerJob, result: dict, records: list[dict]) -> None:
    """The simulator's run directory for one (algorithm, seed)."""
    out = Path(out)
    atomic_write_toml(out / "config.toml", job.meta["experiment"])
    write_jsonl(out / "metrics.jsonl", records)
    atomic_write_json(out / "summary.json", {"name": job.meta["name"], "seeds": [job.seed], "engine": "flower",
                                             "algorithms": {job.name: aggregate_seeds([result])}})


def federation_job(grid: Grid, run_config: dict):
    """Discover the nodes, then the server's job on the federation they describe. Only when some node does not
    describe its data (a stock Flower ClientApp) does the server build the experiment's dataset, for its sizes."""
    exp, _, seed = experiment_of(run_config)
    nodes = discover(grid, exp.data.num_clients, settings(run_config).node_wait)
    info = nodes.info(exp.data.num_clients)
    if info is None:
        log.info("bouquet: some nodes did not describe their data; the server builds the experiment's dataset")
        info = dataset_for_seed(exp, seed).info()
    return server_job(run_config, info), nodes


def _checkpoints(run_config: dict, flower_run_id: int) -> tuple[CheckpointDir | None, str, str]:
    """The server's checkpoint directory (``checkpoint-dir``), its file tag and the run's name (a stamp)."""
    _, name, seed = experiment_of(run_config)
    where = str(run_config.get("checkpoint-dir", ""))
    run = run_name(run_config, flower_run_id)
    return (CheckpointDir(where, stamp={"run": run}) if where else None), f"{name}-seed{seed}", run


def _say(kind: str, obj: dict) -> None:
    print(kind + json.dumps(obj), flush=True)


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    """Run one (algorithm, seed) of the experiment named by the run config, from its latest server checkpoint
    when ``checkpoint-dir`` holds one (a resumed run: the records before it are printed again)."""
    _threads(context, "server-threads")
    grid = prompt(grid)  # deployment: replies seen within ~0.05 s, not after Flower's 3 s polls
    rc = dict(context.run_config)
    ckpt, tag, run = _checkpoints(rc, context.run_id)
    snap = None
    if ckpt is not None:
        ckpt.remove_temporaries()
        found = ckpt.latest(tag, check=lambda c: None if c.get("run") == run else "a checkpoint of another run")
        snap = found[0] if found is not None else None
    if snap is not None and snap.get("finished"):  # nothing left to compute
        for rec in snap["records"]:
            _say(RECORD, rec)
        _say(SUMMARY, snap["summary"])
        return
    job, nodes = federation_job(grid, rc)
    every = int(experiment_of(rc)[0].run.checkpoint_every)

    def on_round(rec: dict) -> None:
        _say(RECORD, rec)
        if ckpt is not None and every and rec["round"] % every == 0 and rec["round"] < job.spec.rounds:
            ckpt.save(tag, rec["round"], {**strategy.snapshot(), "finished": False})
            strategy.checkpointed = rec["round"]

    strategy = BouquetStrategy(job, on_round=on_round, nodes=nodes)
    strategy.checkpoint_every = every if ckpt is not None else 0  # a checkpoint round's record closes at once
    if snap is not None:
        strategy.restore(snap)
        log.info("bouquet: resuming %s after round %d (%s)", tag, strategy.offset, ckpt.dir if ckpt else "")
        for rec in strategy.log.records:
            _say(RECORD, rec)
    start = time.perf_counter()
    strategy.start(grid)
    result = run_summary(job, strategy, time.perf_counter() - start)
    if job.settings.out:
        write_run_dir(job.settings.out, job, result, strategy.log.records)
    why = failure(strategy.log.records, job.settings.min_replies)
    if why is not None:  # a non-zero exit and the reason in one line (our CLI reads the line)
        print(FAILURE + why, flush=True)
        raise RunFailedError(f"bouquet: error: {why}")
    if ckpt is not None:
        ckpt.save(tag, job.spec.rounds, {**strategy.snapshot(), "finished": True, "summary": result})
    _say(SUMMARY, result)
