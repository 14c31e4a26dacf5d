"""Potara benchmark: every method x seed on one config, Potara variants, diagnostics and per-client scores.

Each client's training rows are split once into train (80%) and validation (20%, for the oracles and
the diagnostics); every method trains on the same 80%. Writes ``results.json`` (per method and seed:
accuracy curve against bytes per client, final per-client accuracies; for Potara variants: per-client
test accuracy at lambda = 1 (federated), 0 (local), 0.5 (uniform), the closed form and the accuracy-
and NLL-oracle lambdas, plus the lambda terms) and ``diagnostics/<method>_seed<s>.json`` (per client:
a, b, c, d^2, bias, eta/2B, lambda, both oracle lambdas, validation accuracy and NLL along the grid).

    OMP_NUM_THREADS=1 python benchmarks/potara/run_potara.py configs/potara/fmnist_class_skew.toml --out /tmp/pv \
        --seeds 0,1,2 --variant potara_paper:estimator=paper,merge_space=factor --matched fedit_ft,ditto
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bouquet.app.config import load_experiment, with_run
from bouquet.app.experiment import dataset_for_seed
from bouquet.app.runner import simulator
from bouquet.data import carve_validation
from bouquet.engine.batching import SplitArrays
from bouquet.engine.lambda_oracle import GRID, lambda_grid, merge_diagnostics
from bouquet.files import atomic_write_json

VALIDATION = 0.2


def run_method(exp, data, val, name: str, rounds: int) -> dict:
    """Train one method for ``rounds``; return its curve (bytes per client, accuracy) and final scores."""
    sim, _ = simulator(exp, data, name, exp.run.seeds[0])
    state = sim.init_state()
    curve = []
    start = time.process_time()
    for _ in range(rounds):
        state, rec = sim.run_round(state)
        if state.round % exp.run.eval_every == 0 or state.round == rounds:
            ev = sim.evaluate(state)
            curve.append({"round": state.round, "bytes_per_client": rec["bytes_total"] / data.num_clients,
                          "accuracy": ev["mean"]})
    out = {"curve": curve, "accuracy": curve[-1]["accuracy"], "per_client": ev["per_client"],
           "test_sizes": sim.test.sizes.tolist(), "bytes_per_client": curve[-1]["bytes_per_client"],
           "cpu_seconds": time.process_time() - start, "rounds": rounds}
    if sim.alg.merging is not None:
        lam_start = time.process_time()
        diag = merge_diagnostics(sim.alg, state.server, state.clients, val)
        out["diagnostics_cpu_seconds"] = time.process_time() - lam_start
        out["diagnostics"] = diag
        out.update(merge_extras(sim, state, diag))
    return out


def merge_extras(sim, state, diag: dict) -> dict:
    """Per-client TEST accuracy at lambda = 1, 0, 0.5, the closed form and both validation oracles.

    The test grids (accuracy, NLL) are kept only to measure how noisy the validation oracles are.
    """
    test_acc, test_nll = lambda_grid(sim.alg, state.server, state.clients, sim.test)
    at = lambda lams: [float(test_acc[k, round(lam / 0.05)]) for k, lam in enumerate(lams)]  # noqa: E731
    k = test_acc.shape[0]
    return {"lambda": diag["lambda"], "oracle_lambda": diag["lambda_acc_oracle"],
            "nll_oracle_lambda": diag["lambda_nll_oracle"],
            "pc_federated": at([1.0] * k), "pc_local": at([0.0] * k), "pc_uniform": at([0.5] * k),
            "pc_merged": sim.client_scores(state).score.tolist(),
            "pc_acc_oracle": at(diag["lambda_acc_oracle"]), "pc_nll_oracle": at(diag["lambda_nll_oracle"]),
            "test_grid": test_acc.tolist(), "test_nll_grid": test_nll.tolist(), "grid": list(GRID)}


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """``name:key=val,key=val`` -> {name: ["algo.potara.key=val", ...]} (Potara under another name)."""
    out = {}
    for spec in specs:
        name, _, sets = spec.partition(":")
        out[name] = [f"algo.potara.{kv}" for kv in sets.split(",") if kv]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--algorithms", default=None, help="comma-separated subset")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    ap.add_argument("--variant", action="append", default=[], help="name:potara_key=val,... (a Potara variant)")
    ap.add_argument("--matched", default="", help="methods stopped at Potara's federated_rounds (matched bytes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    exp = load_experiment(args.config, args.set)
    names = args.algorithms.split(",") if args.algorithms is not None else list(exp.algorithms)
    names = [n for n in names if n]
    variants = parse_variants(args.variant)
    matched = set(filter(None, args.matched.split(",")))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(exp.run.seeds)
    out = Path(args.out)
    (out / "diagnostics").mkdir(parents=True, exist_ok=True)
    results: dict = {"config": args.config, "overrides": args.set, "variants": variants,
                     "matched": sorted(matched), "methods": {}}
    jobs = [(n, exp) for n in names] + [(v, load_experiment(args.config, args.set + s)) for v, s in variants.items()]
    for seed in seeds:
        data = dataset_for_seed(exp, seed)
        train, held = carve_validation(data, VALIDATION, seed)
        val = SplitArrays.from_dataset(held, "test")
        for label, e in jobs:
            algo = "potara" if label in variants else label
            rounds = e.algo["potara"].federated_rounds if label in matched else e.run.rounds
            res = run_method(with_run(e, seeds=[seed]), train, val, algo, rounds)
            diag = res.pop("diagnostics", None)
            if diag is not None:
                atomic_write_json(out / "diagnostics" / f"{label}_seed{seed}.json", diag)
            results["methods"].setdefault(label, {})[str(seed)] = res
            print(f"seed {seed} {label:14s} acc {res['accuracy']:.4f} bytes/client {res['bytes_per_client']:.0f} "
                  f"cpu {res['cpu_seconds']:.1f}s", flush=True)
            atomic_write_json(out / "results.json", results)


if __name__ == "__main__":
    main()
