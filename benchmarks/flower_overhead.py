"""Per-round overhead of Flower (simulation runtime and deployment runtime) against the local engine.

One run measures the same experiment (FedAvg on FLoRAL's synthetic_linear task, all 10 clients each
round, evaluation every round) three ways, one after the other:

- local engine, sequential path (the reference the Flower engine matches) and vectorized path
- Flower simulation runtime: ``flower-superlink --simulation``, Ray backend, 10 simulated SuperNodes
- Flower deployment runtime: a SuperLink and 3 ``flower-supernode`` processes on 127.0.0.1

Per-round seconds come from the ServerApp's own round timer (``record["seconds"]``, training +
evaluation), so process start-up is reported apart; medians leave round 1 (warm-up) out. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flower_overhead.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import torch

from bouquet.app.config import parse_experiment, resolved_dict, with_run
from bouquet.app.experiment import data_for_seed
from bouquet.app.flower_run import parse_output, write_app
from bouquet.app.runner import simulator
from bouquet.data import build_dataset
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


def flower_seconds(exp, simulation: bool, supernodes: int) -> tuple[list[float], float, list[dict]]:
    """(seconds per round, wall seconds from start-up to the end of the run, records)."""
    import tomli_w

    run_config = {"experiment": tomli_w.dumps(resolved_dict(exp)), "algorithm": "fedavg", "seed": 0}
    with tempfile.TemporaryDirectory(prefix="bouquet-bench-") as tmp:
        start = time.perf_counter()
        with LocalFederation(tmp, 0 if simulation else supernodes, simulation=simulation) as fed:
            fcfg = {"num-supernodes": supernodes, "client-resources-num-cpus": 1} if simulation else None
            res = fed.run_app(write_app(Path(tmp) / "app", run_config), federation_config=fcfg, timeout=3600)
        wall = time.perf_counter() - start
    records, summary = parse_output(res.stdout)
    if summary is None:
        raise RuntimeError(res.stdout[-3000:])
    return [r["seconds"] for r in records], wall, records


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
    # the three engines compute the same numbers: show the last round's score of each
    print(f"last-round scores: simulation {sim_records[-1]['eval']['mean']:.6f}, "
          f"deployment {dep_records[-1]['eval']['mean']:.6f}")
    def steady(secs: list[float]) -> float:  # round 1 holds one-off warm-up (first calls, actor start)
        return statistics.median(secs[1:] if len(secs) > 1 else secs)

    base = steady(rows["local, sequential"][0])
    print(f"{'engine':42s} {'median s/round':>15s} {'x local seq':>12s} {'wall s (incl. start-up)':>24s}")
    out = {}
    for name, (secs, wall) in rows.items():
        med = steady(secs)
        out[name] = {"seconds_per_round": secs, "median": med, "wall": wall}
        print(f"{name:42s} {med:15.3f} {med / base:12.1f} {'' if wall is None else f'{wall:.1f}':>24s}")
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
