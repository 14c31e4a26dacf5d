"""Per-client perplexity tables of a Shakespeare LM run directory (Markdown, for benchmarks/lm/RESULTS.md).

    python benchmarks/lm/report.py RUN_DIR

For each algorithm: the example-weighted mean over clients at the last evaluation and at the best one
(lowest mean), then every client's perplexity at the last evaluation, named by play and character.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bouquet.app.config import load_experiment
from bouquet.data.shakespeare import client_names


def evaluations(run_dir: Path) -> dict[str, list[dict]]:
    """Algorithm -> its evaluation records (round, mean, per_client) in round order."""
    out: dict[str, list[dict]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec:
            out.setdefault(rec["algorithm"], []).append({"round": rec["round"], **rec["eval"]})
    return out


def tables(run_dir: Path) -> str:
    exp = load_experiment(run_dir / "config.toml")
    names = client_names(exp.data)
    evals = evaluations(run_dir)
    lines = ["| method | last mean ppl (round) | best mean ppl (round) |", "|---|---|---|"]
    for alg, recs in evals.items():
        last, best = recs[-1], min(recs, key=lambda r: r["mean"])
        lines.append(f"| {alg} | {last['mean']:.2f} ({last['round']}) | {best['mean']:.2f} ({best['round']}) |")
    lines += ["", "Per-client perplexity at the last evaluation:", "",
              "| client | " + " | ".join(evals) + " |", "|---|" + "---|" * len(evals)]
    for k, name in enumerate(names):
        lines.append(f"| {k} {name} | " + " | ".join(f"{recs[-1]['per_client'][k]:.2f}" for recs in evals.values())
                     + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    print(tables(ap.parse_args().run_dir))


if __name__ == "__main__":
    main()
