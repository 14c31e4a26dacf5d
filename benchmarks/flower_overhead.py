"""Per-round overhead of Flower (simulation runtime and deployment runtime) against the local engine.

One run measures the same experiment (FedAvg on FLoRAL's synthetic_linear task, all 10 clients each
round, evaluation every round) three ways, one after the other:

- local engine, sequential path (the reference the Flower engine matches) and vectorized path
- Flower simulation runtime: ``flower-superlink --simulation``, Ray backend, 10 simulated SuperNodes
- Flower deployment runtime: a SuperLink and 3 ``flower-supernode`` processes on 127.0.0.1, the nodes
  rebuilding the experiment's dataset, then the same with each node serving its own data directory
  (``bouquet partition``, ``--node-config data-dir=...``: no dataset rebuilt per message); both with Flower's
  default isolation (a new ``flwr-clientapp`` process per message)
- the same deployment with long-lived node workers: ``flower-supernode --isolation process`` and one
  ``bouquet node-worker`` per node running every ClientApp task in-process (own data directories), with
  Flower's waits and Flower's record layout (one Array per tensor), as first measured
- diagnostic: the workers' deployment with Flower 1.42's fixed polling waits shortened in the SuperNodes and
  the ServerApp (``benchmarks/flower_fast_polls/sitecustomize.py``; not a configuration Flower offers)
- node workers with packed records (``packed = true``, the default: one Array per message), with Flower's waits
- node workers with the SuperNodes' waits shortened (``bouquet supernode --busy-wait 0.05 --busy-window 10
  --reply-wait 0.02 --object-retry 0.01``, ``supernode.SHORT``, what ``LocalFederation(workers=True)`` starts),
  Flower's layout
- node workers, packed records and short waits: bouquet's defaults with workers
- the simulation runtime again, last: its rounds are multiples of its grid's 0.1 s reply polls (0.2, 0.3 or
  0.4 s for this task), so one measurement of it can be off by a poll per exchange

The process-per-message rows and the first worker rows run with ``packed = false`` (as first measured); the
simulation row with the default (packed). The ServerApp of every row pulls replies with ``PromptGrid``
(10 ms first object retry since this commit).
- since 2026-12-06 every SuperLink is started by ``bouquet superlink`` (Flower's, with its pass-through
  middleware layers skipped by path: ``bouquet.flower.superlink``), except the row "Flower's own
  flower-superlink", which is the in-node row with Flower's SuperLink as it ships
- the floor Flower's deployment runtime sets: one Python process importing Flower's ClientApp API (what
  every ClientApp message costs before any user code), and one importing bouquet's ClientApp (torch too)

For the worker rows the workers' own log lines give the per-message costs inside a node: pulling the task
input from the SuperNode, the ClientApp call, pushing the reply (medians over all tasks after each node's
first train message, which builds the job).

Per-round seconds come from the ServerApp's own round timer (``record["seconds"]``, training +
evaluation), so process start-up is reported apart; medians leave round 1 (warm-up) out. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flower_overhead.py --rounds 5
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flower_overhead.py --rounds 5 --only-workers  # no process-per-message
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w
import torch

from bouquet.app.config import parse_experiment, resolved_dict, with_run
from bouquet.app.experiment import data_for_seed
from bouquet.app.flower_run import parse_output, write_app
from bouquet.app.runner import simulator
from bouquet.data import build_dataset
from bouquet.data.node_dir import write_node_dirs
from bouquet.flower.deploy import LocalFederation
from bouquet.flower.supernode import FLOWER, SHORT

REPO = Path(__file__).resolve().parents[1]
SIM = "Flower simulation (Ray, 10 SuperNodes)"
SIM_AGAIN = "Flower simulation (Ray, 10 SuperNodes), again at the end"
WORKERS = "Flower deployment (3 SuperNodes + node workers, own data dirs)"
FAST = "Flower deployment + workers, Flower's polling waits shortened (diagnostic)"
PACKED = "Flower deployment + workers, packed records"
SHORT_WAITS = "Flower deployment + workers, bouquet supernode short waits"
BOTH = "Flower deployment + workers, packed records + bouquet supernode short waits"
SIM_LOOP = "Flower simulation (Ray, 10 SuperNodes), Flower's loop (train, then evaluate)"
BOTH_LOOP = BOTH + ", Flower's loop (train, then evaluate)"
IN_NODE = "Flower deployment, worker in each SuperNode's process, packed records + short waits"
IN_NODE_HTTP = IN_NODE + ", its Runtime API over HTTP"
IN_NODE_STOCK = IN_NODE + ", Flower's own flower-superlink (no middleware gates)"


def experiment(rounds: int):
    raw = tomllib.loads((REPO / "configs" / "synthetic_linear.toml").read_text())
    raw["algorithms"] = ["fedavg"]
    raw["run"].update(rounds=rounds, eval_every=1, clients_per_round=10, vectorized=False)
    return parse_experiment(raw)


def local_seconds(exp, vectorized: bool) -> list[float]:
    """Seconds per round (training + evaluation) of the local engine."""
    exp = with_run(exp, seeds=[0], vectorized=vectorized)
    data = build_dataset(data_for_seed(exp, 0))
    sim, _ = simulator(exp, data, "fedavg", 0)
    state = sim.init_state()
    out = []
    for _ in range(exp.run.rounds):
        start = time.perf_counter()
        state, _ = sim.run_round(state)
        sim.evaluate(state)
        out.append(time.perf_counter() - start)
    return out


FAST_POLLS = REPO / "benchmarks" / "flower_fast_polls"
TASK_LINE = re.compile(r"task (\d+) \((\w+)\): completed; pull ([\d.]+) s, app ([\d.]+) s, push ([\d.]+) s")


def worker_tasks(logs: Path) -> list[tuple[str, float, float, float]]:
    """(message type, pull, app, push seconds) of every task the workers logged, each node's tasks after its
    first train message (which builds the job, once per run)."""
    out = []
    for log in sorted([*logs.glob("worker-*.log"), *logs.glob("supernode-*.log")]):
        tasks = [(m[2], float(m[3]), float(m[4]), float(m[5])) for m in TASK_LINE.finditer(log.read_text())]
        first = next((i for i, t in enumerate(tasks) if t[0] == "train"), len(tasks))
        out += tasks[first + 1:]
    return out


def flower_seconds(exp, simulation: bool, supernodes: int, node_data: bool = False, workers: bool = False,
                   fast_polls: bool = False, packed: bool = True, short_waits: bool = False,
                   fold: bool = True, in_node: str | None = None, gated: bool = True
                   ) -> tuple[list[float], float, list[dict], list]:
    """(seconds per round, wall seconds from start-up to the end of the run, records, worker tasks)."""
    run_config = {"experiment": tomli_w.dumps(resolved_dict(exp)), "algorithm": "fedavg", "seed": 0,
                  "packed": packed, "fold-evaluation": fold}
    saved = dict(os.environ)
    if fast_polls:  # the child processes import FAST_POLLS/sitecustomize.py
        os.environ["PYTHONPATH"] = os.pathsep.join([str(FAST_POLLS), os.environ.get("PYTHONPATH", "")])
        os.environ["BOUQUET_FAST_POLLS"] = "0.05"
    try:
        with tempfile.TemporaryDirectory(prefix="bouquet-bench-") as tmp:
            configs = None
            if node_data:
                dirs = write_node_dirs(build_dataset(data_for_seed(exp, 0)), Path(tmp) / "nodes", supernodes)
                configs = [{"data-dir": str(d)} for d in dirs]
            start = time.perf_counter()
            with LocalFederation(tmp, 0 if simulation else supernodes, simulation=simulation,
                                 node_configs=configs, workers=workers, worker_in_node=in_node is not None,
                                 worker_over_http=in_node == "http",
                                 node_waits=SHORT if short_waits else FLOWER, gated_link=gated) as fed:
                fcfg = {"num-supernodes": supernodes, "client-resources-num-cpus": 1} if simulation else None
                res = fed.run_app(write_app(Path(tmp) / "app", run_config), federation_config=fcfg, timeout=3600)
            wall = time.perf_counter() - start
            tasks = worker_tasks(fed.logs)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    records, summary = parse_output(res.stdout)
    if summary is None:
        raise RuntimeError(res.stdout[-3000:])
    return [r["seconds"] for r in records], wall, records, tasks


def import_seconds(statement: str, repeats: int = 3) -> float:
    """Median wall seconds of a fresh Python process running ``statement`` (a ClientApp process's start)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--only-workers", action="store_true", help="leave out the two process-per-message "
                   "deployment rows (minutes each)")
    p.add_argument("--only-defaults", action="store_true", help="of the worker rows, only bouquet's defaults "
                   "(packed, short waits) with and without folded evaluation")
    args = p.parse_args()
    torch.set_num_threads(1)
    exp = experiment(args.rounds)
    rows, scores, tasks = {}, {}, {}
    rows["local, sequential"] = (local_seconds(exp, False), None)
    rows["local, vectorized"] = (local_seconds(exp, True), None)
    old = dict(fold=False)  # the rows as first measured: Flower's loop, two exchanges per round
    flower_rows = [(SIM, dict(simulation=True, supernodes=10)), (SIM_LOOP, dict(simulation=True, supernodes=10,
                                                                                **old))]
    if not args.only_workers:
        flower_rows += [("Flower deployment (3 SuperNodes)", dict(simulation=False, supernodes=3, packed=False, **old)),
                        ("Flower deployment (3 SuperNodes, own data dirs)",
                         dict(simulation=False, supernodes=3, node_data=True, packed=False, **old))]
    dep = dict(simulation=False, supernodes=3, node_data=True, workers=True)
    if not args.only_defaults:
        flower_rows += [(WORKERS, dict(dep, packed=False, **old)),
                        (FAST, dict(dep, packed=False, fast_polls=True, **old)), (PACKED, dict(dep, **old)),
                        (SHORT_WAITS, dict(dep, packed=False, short_waits=True, **old))]
    flower_rows += [(BOTH_LOOP, dict(dep, short_waits=True, **old)), (BOTH, dict(dep, short_waits=True)),
                    (IN_NODE_HTTP, dict(dep, short_waits=True, in_node="http")),
                    (IN_NODE_STOCK, dict(dep, short_waits=True, in_node="direct", gated=False)),
                    (IN_NODE, dict(dep, short_waits=True, in_node="direct")),
                    (SIM_AGAIN, dict(simulation=True, supernodes=10))]
    loads = {"start": os.getloadavg()}
    for name, kw in flower_rows:
        secs, wall, records, tasks[name] = flower_seconds(exp, **kw)
        rows[name] = (secs, wall)
        loads[name] = os.getloadavg()
        print(f"{name}: s/round {[round(x, 3) for x in secs]}, load average {loads[name]}", flush=True)
        scores[name] = records[-1]["eval"]["mean"]  # the engines compute the same numbers
    print("last-round scores: " + ", ".join(f"{name}: {v:.6f}" for name, v in scores.items()))
    floor = {"python + flwr ClientApp API": import_seconds("import flwr.app, flwr.clientapp"),
             "python + bouquet ClientApp": import_seconds("import bouquet.app.flower_apps")}
    for name, secs in floor.items():
        print(f"one process start ({name}): {secs:.2f} s")
    def steady(secs: list[float]) -> float:  # round 1 holds one-off warm-up (first calls, actor start)
        return statistics.median(secs[1:] if len(secs) > 1 else secs)

    base = steady(rows["local, sequential"][0])
    print(f"{'engine':78s} {'median s/round':>15s} {'x local seq':>12s} {'wall s (incl. start-up)':>24s}")
    out = {}
    for name, (secs, wall) in rows.items():
        med = steady(secs)
        out[name] = {"seconds_per_round": secs, "median": med, "wall": wall}
        print(f"{name:78s} {med:15.3f} {med / base:12.1f} {'' if wall is None else f'{wall:.1f}':>24s}")
    sim_med, sim_again = out[SIM]["median"], out[SIM_AGAIN]["median"]
    sim_loop = out[SIM_LOOP]["median"]
    for name in rows:
        if name.startswith("Flower deployment"):
            if name.endswith("(train, then evaluate)") or name in (WORKERS, FAST, PACKED, SHORT_WAITS) \
                    or "3 SuperNodes)" in name or "own data dirs)" in name:
                print(f"{name}: {out[name]['median'] / sim_loop:.1f}x the simulation runtime's s/round with "
                      f"Flower's loop")
            else:
                print(f"{name}: {out[name]['median'] / sim_med:.1f}x the simulation runtime's s/round, folded "
                      f"({out[name]['median'] / sim_again:.1f}x its second measurement)")
    for name, got in tasks.items():
        if got:
            med = {k: statistics.median(t[i] for t in got) for i, k in enumerate(("pull", "app", "push"), 1)}
            out[name]["worker_task_median"] = med
            print(f"{name}: {len(got)} worker tasks, median pull {med['pull']:.3f} s, app {med['app']:.3f} s, "
                  f"push {med['push']:.3f} s")
    out["process_start"] = floor
    out["load_average"] = loads
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
