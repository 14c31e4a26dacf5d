"""The FLoRAL CNN table's slow baselines, each against its previous training path, interleaved in one process.

Workload: `configs/floral/fashion_mnist_rotate_cnn.toml` (300 clients, 30 per round, batch 32, one epoch = 7
steps), seed 0, each algorithm with the config's settings. Per algorithm two simulators from the same initial
state: the current default path and the path it replaced:

- ifca, floral_em: the cluster choice (IFCA) or the EM router (FLoRAL) from all clients' candidate losses by
  the conv kernels' forward, against client_init one client at a time (training on the kernels in both);
- ensemble_opt: the conv kernels (one gathered member per client) against the client loop;
- ensemble, floral_paper (the official noisy router, floor, member skip): the conv kernels with the same
  router noise draws as vmap, against the client loop.

Each repeat runs one round of every (algorithm, path) in turn (who goes first rotates), so a busy machine slows
them alike; reported: the median wall seconds per round and old / new.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cnn_algorithms.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from bouquet.app.config import load_experiment
from bouquet.app.experiment import build_algorithm, dataset_for_seed
from bouquet.engine.simulator import Simulator

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "floral" / "fashion_mnist_rotate_cnn.toml"
ALGORITHMS = ("ifca", "ensemble_opt", "ensemble", "floral_paper")


def simulators(name: str, exp, data) -> dict[str, Simulator]:
    """The current path and the one it replaced for ``name``."""
    spec = exp.run.spec()
    new = Simulator(build_algorithm(exp, data, name, 0)[0], data, spec, seed=0)
    if name in ("ifca", "floral_em"):
        old = Simulator(build_algorithm(exp, data, name, 0)[0], data, spec, seed=0)
        old.alg = replace(old.alg, choose_by_loss=None)
    else:
        old = Simulator(build_algorithm(exp, data, name, 0)[0], data, replace(spec, hand_batched=False), seed=0)
    return {"new": new, "old": old}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exp = load_experiment(CONFIG)
    data = dataset_for_seed(exp, 0)
    ways, paths = {}, {}
    for name in args.algorithms.split(","):
        for which, sim in simulators(name, exp, data).items():
            box = {"state": sim.init_state()}

            def step(sim=sim, box=box):
                box["state"], _ = sim.run_round(box["state"])

            ways[(name, which)] = step
            paths[(name, which)] = sim
    wall: dict = {k: [] for k in ways}
    names = list(ways)
    for rep in range(args.repeats + 1):  # the first pass is a warm-up (and the kernels' first-step check)
        for key in names[rep % len(names):] + names[:rep % len(names)]:
            t = time.perf_counter()
            ways[key]()
            if rep:
                wall[key].append(time.perf_counter() - t)
        print(f"repeat {rep} done", flush=True)
    print(f"threads={args.threads}, median of {args.repeats} rounds (after one warm-up round) per path")
    print("| algorithm | previous path | s/round | current path | s/round | previous / current |")
    print("|---|---|---|---|---|---|")
    for name in args.algorithms.split(","):
        old, new = statistics.median(wall[(name, "old")]), statistics.median(wall[(name, "new")])
        old_path = "client_init one client at a time" if name == "ifca" else paths[(name, "old")].training_path
        print(f"| {name} | {old_path} | {old:.2f} | {paths[(name, 'new')].training_path} | {new:.2f} | "
              f"{old / new:.2f}x |")


if __name__ == "__main__":
    main()
