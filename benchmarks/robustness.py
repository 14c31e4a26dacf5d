"""Malicious clients: FedAvg under a scaling attack, with and without robust aggregation.

A seeded fraction of clients scale their update (upload - payload) by ``--scale`` every round they
are sampled (``[robust] attack = "scale"``). Prints a Markdown table of final accuracies.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/robustness.py --data mnist5k --clients 50 --per-round 10
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from bouquet.app.config import load_experiment
from bouquet.app.experiment import dataset_for_seed
from bouquet.app.runner import run_one
from bouquet.engine.robust import RobustConfig

ROOT = Path(__file__).resolve().parents[1]


def settings(fraction: float, scale: float, clip_norm: float | None) -> dict[str, RobustConfig]:
    attack = {"attack": "scale", "attack_fraction": fraction, "attack_scale": scale}
    fixed = {f"attacked + clip (fixed {clip_norm:g})": RobustConfig(**attack, aggregation="clip", clip_norm=clip_norm)
             } if clip_norm else {}
    return {
        "clean (no attack)": RobustConfig(),
        "attacked, no defence": RobustConfig(**attack),
        "attacked + clip (median norm)": RobustConfig(**attack, aggregation="clip"),
        "attacked + clip (25% quantile norm)": RobustConfig(**attack, aggregation="clip", clip_quantile=0.25),
        **fixed,
        "attacked + trimmed mean 0.2": RobustConfig(**attack, aggregation="trimmed_mean", trim_fraction=0.2),
        "attacked + trimmed mean 0.4": RobustConfig(**attack, aggregation="trimmed_mean", trim_fraction=0.4),
        "attacked + coordinate median": RobustConfig(**attack, aggregation="median"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--scale", type=float, default=1e3)
    p.add_argument("--seeds", default="0")
    p.add_argument("--clip-norm", type=float, default=None, help="also run clipping at this fixed threshold "
                   "(pick it from the honest update norms: below them it clips every client and slows training)")
    p.add_argument("--only", default="", help="run only the settings whose label contains this text")
    args = p.parse_args()
    torch.set_num_threads(1)
    exp = load_experiment(ROOT / "configs" / "mnist5k_iid.toml", [
        f"data.name='{args.data}'", f"data.num_clients={args.clients}", f"run.rounds={args.rounds}",
        f"run.clients_per_round={args.per_round}", f"run.eval_every={args.rounds}", "run.checkpoint_every=0"])
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"FedAvg, {args.data} IID, {args.clients} clients, {args.per_round} per round, {args.rounds} rounds, "
          f"{100 * args.fraction:.0f}% malicious clients scaling updates by {args.scale:g}; seeds {seeds}\n")
    print("| setting | final accuracy (%) | rejected updates | seconds |")
    print("|---|---|---|---|")
    for label, robust in settings(args.fraction, args.scale, args.clip_norm).items():
        if args.only not in label:
            continue
        accs, rejected, start = [], 0, time.perf_counter()
        for seed in seeds:
            data = dataset_for_seed(exp, seed)
            summary, _ = run_one(replace(exp, robust=robust), data, "fedavg", seed)
            accs.append(100 * summary["last"]["mean"])
            rejected += summary["rejected_updates"]
        mean = sum(accs) / len(accs)
        spread = f" (seeds: {', '.join(f'{a:.2f}' for a in accs)})" if len(accs) > 1 else ""
        print(f"| {label} | {mean:.2f}{spread} | {rejected} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
