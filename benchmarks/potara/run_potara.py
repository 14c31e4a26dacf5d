"""Potara benchmark: every method x seed on one config, plus Potara's lambdas beside the grid oracle.

Each client's training rows are split once into train (80%) and validation (20%, for the oracle);
every method trains on the same 80%. Writes ``results.json`` (per method and seed: accuracy curve
against bytes per client, final per-client accuracies; for Potara: closed-form and oracle lambdas
and the test accuracy of the federated, local, merged and oracle-merged models).

    OMP_NUM_THREADS=1 python benchmarks/potara/run_potara.py configs/potara/fmnist.toml --out /tmp/pv
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from bouquet.app.config import load_experiment, with_run
from bouquet.app.runner import simulator
from bouquet.data import build_dataset, carve_validation
from bouquet.engine.batching import SplitArrays
from bouquet.engine.lambda_oracle import GRID, closed_form_lambdas, lambda_scores, oracle_lambdas

VALIDATION = 0.2


def run_method(exp, data, val, name: str, seed: int) -> dict:
    """Train one method; return its curve (bytes per client, accuracy) and final per-client scores."""
    sim, _ = simulator(exp, data, name, seed)
    alg = sim.alg
    state = sim.init_state()
    curve = []
    start = time.process_time()
    for _ in range(exp.run.rounds):
        state, rec = sim.run_round(state)
        if state.round % exp.run.eval_every == 0 or state.round == exp.run.rounds:
            ev = sim.evaluate(state)
            curve.append({"round": state.round, "bytes_per_client": rec["bytes_total"] / data.num_clients,
                          "accuracy": ev["mean"]})
    out = {"curve": curve, "accuracy": curve[-1]["accuracy"], "per_client": ev["per_client"],
           "bytes_per_client": curve[-1]["bytes_per_client"], "cpu_seconds": time.process_time() - start}
    if name == "potara":
        out.update(potara_extras(alg, sim, state, val))
    return out


def potara_extras(alg, sim, state, val) -> dict:
    """Closed-form vs oracle lambdas, and test accuracy at lambda = 1 (federated), 0 (local), closed form, oracle."""
    lam = closed_form_lambdas(alg, state.server, state.clients)
    val_scores = lambda_scores(alg, state.server, state.clients, val)
    test_scores = lambda_scores(alg, state.server, state.clients, sim.test)
    oracle = oracle_lambdas(val_scores)
    idx = (oracle / 0.05).round().long()
    w = sim.test.sizes.double()
    mean = lambda s: float((s.double() * w).sum() / w.sum())  # noqa: E731
    merged = sim.client_scores(state).score
    fed, loc = test_scores[:, -1], test_scores[:, 0]
    return {
        "lambda": lam.tolist(), "oracle_lambda": oracle.tolist(),
        "acc_federated": mean(fed), "acc_local": mean(loc), "acc_merged": mean(merged),
        "acc_oracle": mean(test_scores.gather(1, idx[:, None]).squeeze(1)),
        "acc_best_fixed_lambda": max(mean(test_scores[:, j]) for j in range(len(GRID))),
        "beats_both": float(((merged > fed) & (merged > loc)).double().mean()),
        "at_least_both": float(((merged >= fed) & (merged >= loc)).double().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--algorithms", default=None, help="comma-separated subset")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    exp = load_experiment(args.config, args.set)
    names = args.algorithms.split(",") if args.algorithms else exp.algorithms
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"config": args.config, "overrides": args.set, "methods": {}}
    for seed in exp.run.seeds:
        data = build_dataset(replace(exp.data, seed=exp.data.seed + seed))
        train, held = carve_validation(data, VALIDATION, seed)
        val = SplitArrays.from_dataset(held, "test")
        for name in names:
            res = run_method(with_run(exp, seeds=[seed]), train, val, name, seed)
            results["methods"].setdefault(name, {})[str(seed)] = res
            print(f"seed {seed} {name:11s} acc {res['accuracy']:.4f} bytes/client {res['bytes_per_client']:.0f} "
                  f"cpu {res['cpu_seconds']:.1f}s", flush=True)
            (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
