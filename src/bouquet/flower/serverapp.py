"""The bouquet ``ServerApp``: builds the task from the run config and runs ``BouquetStrategy``.

Outputs: every round record and the final summary are printed as ``bouquet-record {json}`` /
``bouquet-summary {json}`` log lines (``flwr run --stream`` and ``flwr log`` carry them to the
user, wherever the SuperLink runs), and with ``out`` set the ServerApp also writes the local
engine's run directory (config.toml, metrics.jsonl, summary.json) on its own machine.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import resolved_dict
from ..results import atomic_write_json, atomic_write_toml, write_jsonl
from .strategy import BouquetStrategy
from .task import Task, load_task, settings

RECORD, SUMMARY = "bouquet-record ", "bouquet-summary "
log = logging.getLogger("bouquet.flower")

app = ServerApp()


def run_summary(task: Task, strategy: BouquetStrategy, wall: float) -> dict:
    """The local engine's per-(algorithm, seed) summary (``runner.run_one``) plus a ``flower`` section."""
    from ..runner import is_better

    metric = "accuracy" if task.data.task == "classification" else "mse"
    evals = [(r["round"], r["eval"]) for r in strategy.records if "eval" in r]
    last = best = None
    for rnd, ev in evals:
        last = {"round": rnd, **ev}
        if best is None or is_better(metric, ev["mean"], best["mean"]):
            best = {"round": rnd, **ev}
    st = strategy.state
    empty = {"round": 0, "mean": float("nan"), "std": float("nan"), "loss": float("nan"), "per_cluster": {}}
    last, best = last or empty, best or empty
    records = strategy.records
    return {
        "algorithm": task.name, "seed": task.seed, "metric": metric, "rounds": st.round,
        "last": {k: last[k] for k in ("round", "mean", "std", "loss", "per_cluster")},
        "best": {k: best[k] for k in ("round", "mean", "std", "per_cluster")},
        "bytes_up": st.bytes_up, "bytes_down": st.bytes_down,
        "mb_per_round": (st.bytes_up + st.bytes_down) / max(st.round, 1) / 1e6,
        "params": strategy.param_counts, "wall_seconds": wall,
        "rejected_updates": sum(len(r.get("rejected", [])) for r in records),
        "extra": {},
        "flower": {
            "failed_updates": sum(len(r.get("failed", [])) for r in records),
            "skipped_rounds": [r["round"] for r in records if r.get("skipped")],
            "received_keys": sorted(strategy.received_keys),
            "partition_of_node": {str(n): p for n, p in sorted(strategy.partitions.items())},
        },
    }


def write_run_dir(out: str | Path, task: Task, summary: dict, records: list[dict]) -> None:
    """The local engine's run directory for one (algorithm, seed)."""
    from ..runner import aggregate_seeds

    out = Path(out)
    atomic_write_toml(out / "config.toml", resolved_dict(task.exp))
    write_jsonl(out / "metrics.jsonl", records)
    atomic_write_json(out / "summary.json", {"name": task.exp.name, "seeds": [task.seed], "engine": "flower",
                                             "algorithms": {task.name: aggregate_seeds([summary])}})


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one (algorithm, seed) of the experiment named by the run config."""
    rc = dict(context.run_config)
    torch.set_num_threads(int(rc.get("server-threads", 1)))
    task, st = load_task(rc), settings(rc)
    strategy = BouquetStrategy(task, st)
    start = time.perf_counter()

    def emit(rec: dict) -> None:
        print(RECORD + json.dumps(rec), flush=True)

    records = strategy.run_rounds(grid, on_round=emit)
    summary = run_summary(task, strategy, time.perf_counter() - start)
    print(SUMMARY + json.dumps(summary), flush=True)
    if st.out:
        write_run_dir(st.out, task, summary, records)
    strategy.summary()
