"""Cost of checkpointing a long run: ``checkpoint_every = 10`` against ``checkpoint_every = 0`` (final only).

Both are the same ``bouquet run`` of ``configs/synthetic_linear.toml`` (FedAvg and Local, 10 clients) in a
fresh process each, evaluation made rare (``run.eval_every``) so that rounds and checkpoints dominate;
wall time of the whole process, one thread. The target (issue 18) is a ratio of at most 1.3 at 10,000
rounds: a checkpoint's cost must not grow with the run. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/checkpoint_cost.py --rounds 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(out: Path, rounds: int, every: int, eval_every: int) -> float:
    """Wall seconds of one ``bouquet run`` process into ``out``."""
    sets = [f"run.rounds={rounds}", f"run.checkpoint_every={every}", f"run.eval_every={eval_every}", "run.threads=1"]
    cmd = [sys.executable, "-m", "bouquet", "run", str(REPO / "configs" / "synthetic_linear.toml"), "--no-progress",
           "--out", str(out), *(a for s in sets for a in ("--set", s))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Run both settings (alternating when repeated) and print the wall times and their ratio as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10_000)
    p.add_argument("--every", type=int, default=10, help="checkpoint_every of the checkpointed run")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    times: dict[str, list[float]] = {"checkpoint_every=0": [], f"checkpoint_every={args.every}": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for every in (0, args.every):
                out = Path(tmp) / f"run-{every}-{i}"
                times[f"checkpoint_every={every}"].append(timed_run(out, args.rounds, every, args.eval_every))
                lines = sum(1 for _ in (out / "metrics.jsonl").open())
                ckpt = sum(p.stat().st_size for p in (out / "checkpoints").glob("*.ckpt"))
                print(f"checkpoint_every={every}: {times[f'checkpoint_every={every}'][-1]:.1f} s, {lines} "
                      f"metrics lines, {ckpt / 1e3:.1f} kB of checkpoints kept", file=sys.stderr, flush=True)
    base, ckpt = (min(v) for v in times.values())
    print(json.dumps({"rounds": args.rounds, "eval_every": args.eval_every, "seconds": times,
                      "ratio": round(ckpt / base, 3)}, indent=2))


if __name__ == "__main__":
    main()
