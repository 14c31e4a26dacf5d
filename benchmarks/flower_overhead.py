"""Per-round overhead of Flower (simulation runtime and deployment runtime) against the local engine.

One run measures the same experiment (FedAvg on FLoRAL's synthetic_linear task, all 10 clients each
round, evaluation every round) three ways, one after the other:

- local engine, sequential path (the reference the Flower engine matches) and vectorized path
- Flower simulation runtime: ``flower-superlink --simulation``, Ray backend, 10 simulated SuperNodes
- Flower deployment runtime: a SuperLink and 3 ``flower-supernode`` processes on 127.0.0.1, the nodes
  rebuilding the experiment's dataset, then the same with each node serving its own data directory
  (``bouquet partition``, ``--node-config data-dir=...``: no dataset rebuilt per message)
- the floor Flower's deployment runtime sets: one Python process importing Flower's ClientApp API (what
  every ClientApp message costs before any user code), and one importing bouquet's ClientApp (torch too)

Per-round seconds come from the ServerApp's own round timer (``record["seconds"]``, training +
evaluation), so process start-up is reported apart; medians leave round 1 (warm-up) out. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flower_overhead.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
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

REPO = Path(__file__).resolve().parents[1]


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


def flower_seconds(exp, simulation: bool, supernodes: int,
                   node_data: bool = False) -> tuple[list[float], float, list[dict]]:
    """(seconds per round, wall seconds from start-up to the end of the run, records)."""
    run_config = {"experiment": tomli_w.dumps(resolved_dict(exp)), "algorithm": "fedavg", "seed": 0}
    with tempfile.TemporaryDirectory(prefix="bouquet-bench-") as tmp:
        configs = None
        if node_data:
            dirs = write_node_dirs(build_dataset(data_for_seed(exp, 0)), Path(tmp) / "nodes", supernodes)
            configs = [{"data-dir": str(d)} for d in dirs]
        start = time.perf_counter()
        with LocalFederation(tmp, 0 if simulation else supernodes, simulation=simulation,
                             node_configs=configs) as fed:
            fcfg = {"num-supernodes": supernodes, "client-resources-num-cpus": 1} if simulation else None
            res = fed.run_app(write_app(Path(tmp) / "app", run_config), federation_config=fcfg, timeout=3600)
        wall = time.perf_counter() - start
    records, summary = parse_output(res.stdout)
    if summary is None:
        raise RuntimeError(res.stdout[-3000:])
    return [r["seconds"] for r in records], wall, records


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
    args = p.parse_args()
    torch.set_num_threads(1)
    exp = experiment(args.rounds)
    rows = {}
    rows["local, sequential"] = (local_seconds(exp, False), None)
    rows["local, vectorized"] = (local_seconds(exp, True), None)
    sim, sim_wall, sim_records = flower_seconds(exp, True, 10)
    rows["Flower simulation (Ray, 10 SuperNodes)"] = (sim, sim_wall)
    dep, dep_wall, dep_records = flower_seconds(exp, False, 3)
    rows["Flower deployment (3 SuperNodes)"] = (dep, dep_wall)
    own, own_wall, own_records = flower_seconds(exp, False, 3, node_data=True)
    rows["Flower deployment (3 SuperNodes, own data dirs)"] = (own, own_wall)
    # the engines compute the same numbers: show the last round's score of each
    print(f"last-round scores: simulation {sim_records[-1]['eval']['mean']:.6f}, "
          f"deployment {dep_records[-1]['eval']['mean']:.6f}, own data {own_records[-1]['eval']['mean']:.6f}")
    floor = {"python + flwr ClientApp API": import_seconds("import flwr.app, flwr.clientapp"),
             "python + bouquet ClientApp": import_seconds("import bouquet.app.flower_apps")}
    for name, secs in floor.items():
        print(f"one process start ({name}): {secs:.2f} s")
    def steady(secs: list[float]) -> float:  # round 1 holds one-off warm-up (first calls, actor start)
        return statistics.median(secs[1:] if len(secs) > 1 else secs)

    base = steady(rows["local, sequential"][0])
    print(f"{'engine':48s} {'median s/round':>15s} {'x local seq':>12s} {'wall s (incl. start-up)':>24s}")
    out = {}
    for name, (secs, wall) in rows.items():
        med = steady(secs)
        out[name] = {"seconds_per_round": secs, "median": med, "wall": wall}
        print(f"{name:48s} {med:15.3f} {med / base:12.1f} {'' if wall is None else f'{wall:.1f}':>24s}")
    sim_med = out["Flower simulation (Ray, 10 SuperNodes)"]["median"]
    for name in ("Flower deployment (3 SuperNodes)", "Flower deployment (3 SuperNodes, own data dirs)"):
        print(f"{name}: {out[name]['median'] / sim_med:.1f}x the simulation runtime's s/round")
    out["process_start"] = floor
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
