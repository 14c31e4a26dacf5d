"""The ``bouquet bench`` subcommand: ``speed`` (three engines on the FLoRAL MNIST workload) and ``scale``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .scale import interleaved_scale, interleaved_scale_table, spawn, table
from .speed import add_arguments, main_args


def add_bench_parser(sub) -> None:
    """Register ``bench speed`` and ``bench scale`` under the main parser's subcommands."""
    bench = sub.add_parser("bench", help="benchmarks: speed of the engines, scale in registered clients")
    kinds = bench.add_subparsers(dest="bench", required=True)
    speed = kinds.add_parser("speed", help="bouquet vs a PFLlib-style loop vs Flower on FLoRAL MNIST")
    add_arguments(speed)
    scale = kinds.add_parser("scale", help="FLoRAL with many registered clients: s/round and peak RSS")
    scale.add_argument("--clients", default="1000,10000,100000", help="comma-separated numbers of registered clients")
    scale.add_argument("--per-round", type=int, default=100)
    scale.add_argument("--rounds", type=int, default=10)
    scale.add_argument("--threads", type=int, default=2)
    scale.add_argument("--interleaved", action="store_true",
                       help="also time every count's rounds alternated in one process (a fair ratio under load)")
    scale.add_argument("--json", help="also write the results here")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its markdown table."""
    if args.bench == "speed":
        return main_args(args)
    counts = [int(n) for n in args.clients.split(",")]
    results = [spawn(n, args.rounds, args.per_round, args.threads) for n in counts]
    print(table(results))
    if args.interleaved:
        mixed = interleaved_scale(counts, args.rounds, args.per_round, threads=args.threads)
        print()
        print(interleaved_scale_table(mixed))
        results = {"separate": results, "interleaved": mixed}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0
