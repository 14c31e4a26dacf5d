"""Paired bootstrap intervals for differences between two methods of the FLoRAL grid, client by client.

Two variants of one task and seed share clients and test rows (the data seed is the run seed), so each
client's last-round score difference is a paired observation. A resample draws clients with replacement
within every seed, averages the differences (weighted by test rows) per seed, then over seeds; the
interval is the 2.5-97.5 percentile of 2,000 resamples.

    python benchmarks/floral/paired.py --task fmnist5_rotate --pairs floral_opt:floral,floral:fedavg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def last_eval(task: str, variant: str, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-client score, per-client test rows) of the run's last evaluation, or None when not run."""
    f = OUT / task / variant / f"seed{seed}" / "metrics.jsonl"
    if not f.exists():
        return None
    last = None
    for line in f.read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec:
            last = rec["eval"]
    if last is None:
        return None
    scores = np.asarray(last["per_client"], dtype=np.float64)
    rows = np.asarray(last.get("num_examples", np.ones_like(scores)), dtype=np.float64)
    return scores, rows


def paired_interval(task: str, a: str, b: str, seeds: list[int], resamples: int = 2000,
                    rng_seed: int = 0) -> dict | None:
    """Mean difference a - b (points) over seeds, its 95% paired-bootstrap interval, and the seeds used."""
    pairs = []
    for s in seeds:
        ea, eb = last_eval(task, a, s), last_eval(task, b, s)
        if ea is not None and eb is not None and len(ea[0]) == len(eb[0]):
            pairs.append((ea[0] - eb[0], ea[1]))
    if not pairs:
        return None
    rng = np.random.default_rng(rng_seed)
    point = np.mean([np.average(d, weights=w) for d, w in pairs])
    draws = np.zeros(resamples)
    for d, w in pairs:
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        draws += (d[idx] * w[idx]).sum(1) / w[idx].sum(1)
    draws /= len(pairs)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"diff": 100 * point, "lo": 100 * lo, "hi": 100 * hi, "seeds": len(pairs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--pairs", required=True, help="comma-separated a:b (variant names, a - b)")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"#### {args.task}: paired differences (points), 95% bootstrap over clients\n")
    print("| a - b | difference | 95% interval | seeds |\n|---|---|---|---|")
    for pair in args.pairs.split(","):
        a, b = pair.split(":")
        r = paired_interval(args.task, a, b, seeds)
        if r is not None:
            print(f"| {a} - {b} | {r['diff']:+.1f} | [{r['lo']:+.1f}, {r['hi']:+.1f}] | {r['seeds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
