"""Run the FLoRAL reproduction grid: one `bouquet run` process per (task, algorithm, seed), a few at a time.

Each job writes ``benchmarks/floral/out/<task>/<algorithm>/seed<k>/`` (git-ignored) and its wall time
to ``benchmarks/floral/out/walltimes.jsonl``; finished jobs are skipped on re-runs, and an interrupted one (its
directory holds checkpoints but no summary) continues with ``bouquet run --resume``. Then
``report.py`` turns the summaries into the RESULTS.md tables.

    OMP_NUM_THREADS=1 python benchmarks/floral/grid.py --tasks synthetic_linear,mnist5k_rotate \
        --algorithms fedavg,floral --seeds 0,1,2 --jobs 2 [--set run.rounds=500 --tag short]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "out"
BOUQUET = [sys.executable, "-m", "bouquet"]


def job_dir(task: str, algorithm: str, seed: int, tag: str = "") -> Path:
    return OUT / task / (f"{algorithm}@{tag}" if tag else algorithm) / f"seed{seed}"


def run_job(task: str, algorithm: str, seed: int, overrides: list[str], tag: str = "") -> dict:
    """One `bouquet run` with a single algorithm and seed; returns its wall time record."""
    out = job_dir(task, algorithm, seed, tag)
    if (out / "summary.json").exists():
        return {"task": task, "algorithm": algorithm, "seed": seed, "skipped": True}
    if any((out / "checkpoints").glob("*.ckpt")):  # an interrupted run: continue it from its checkpoints
        cmd = [*BOUQUET, "run", "--resume", str(out), "--no-progress"]
    else:
        cmd = [*BOUQUET, "run", str(ROOT / "configs" / "floral" / f"{task}.toml"), "--algorithms", algorithm,
               "--seeds", str(seed), "--out", str(out), "--no-progress"]
        for o in overrides:
            cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    rec = {"task": task, "algorithm": algorithm, "tag": tag, "seed": seed, "wall_s": round(time.time() - start, 1),
           "rc": proc.returncode, "overrides": overrides}
    if proc.returncode:
        rec["stderr"] = proc.stderr[-2000:]
    with open(OUT / "walltimes.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "stderr"}), flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", required=True, help="comma-separated config names under configs/floral/")
    p.add_argument("--algorithms", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2, help="processes at a time (the machine has 2 cores)")
    p.add_argument("--set", action="append", default=[], help="override passed to every run")
    p.add_argument("--tag", default="", help="variant name: runs go to out/<task>/<algorithm>@<tag>/")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    jobs = [(t, a, int(s)) for t in args.tasks.split(",") for s in args.seeds.split(",")
            for a in args.algorithms.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_job(*j, args.set, args.tag), jobs))
    failed = [r for r in results if r.get("rc")]
    for r in failed:
        print(f"FAILED {r['task']} {r['algorithm']} seed {r['seed']}:\n{r.get('stderr', '')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
