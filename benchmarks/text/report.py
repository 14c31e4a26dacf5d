"""Text benchmark tables from run_potara.py results: last and best mean accuracy per method, per task, and the
paired per-client bootstrap CI of one method minus another (benchmarks/potara/protocol.py's bootstrap).

Several results files of one config (different seeds or methods) are merged first.

    python benchmarks/text/report.py /tmp/texthf/bbc_main/results.json /tmp/texthf/bbc_extra/results.json \
        --seeds 3,4,5,6,7 --tasks 1 --diff fedit:local_lora --merged-out /tmp/texthf/bbc.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics as st
from pathlib import Path

import numpy as np

_SPEC = importlib.util.spec_from_file_location("potara_protocol", Path(__file__).resolve().parents[1] / "potara"
                                               / "protocol.py")
protocol = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(protocol)

TASK_NAMES = ("bbc", "fortune", "play", "speaker")


def merge(paths: list[str]) -> dict:
    """One results dict: every (method, seed) of every file (a later file wins a clash)."""
    out: dict = {"methods": {}}
    for p in paths:
        res = json.loads(Path(p).read_text())
        out.setdefault("config", res.get("config"))
        for m, runs in res["methods"].items():
            out["methods"].setdefault(m, {}).update(runs)
    return out


def task_means(per_client: list[float], tasks: int) -> list[float]:
    """Mean accuracy of the clients of each task (client k has task k % tasks)."""
    return [float(np.mean(per_client[t::tasks])) for t in range(tasks)]


def method_row(name: str, runs: dict, seeds: list[str], tasks: int) -> str:
    """Markdown row: last (mean ± std over seeds), best of the seed-mean curve (round), per task, KB, CPU s."""
    last = [100 * runs[s]["accuracy"] for s in seeds]
    curves = np.array([[100 * c["accuracy"] for c in runs[s]["curve"]] for s in seeds]).mean(0)
    rounds = [c["round"] for c in runs[seeds[0]]["curve"]]
    best = int(curves.argmax())
    per_task = np.mean([task_means(runs[s]["per_client"], tasks) for s in seeds], axis=0)
    cells = " | ".join(f"{100 * v:.1f}" for v in per_task) if tasks > 1 else ""
    sd = st.stdev(last) if len(last) > 1 else 0.0
    cpu = st.mean(runs[s]["cpu_seconds"] for s in seeds)
    return (f"| {name} | {st.mean(last):.2f} ± {sd:.2f} | {curves[best]:.2f} (round {rounds[best]}) | "
            + (f"{cells} | " if cells else "")
            + f"{runs[seeds[0]]['bytes_per_client'] / 1e3:,.0f} | {cpu:.0f} |")


def methods_table(res: dict, seeds: list[str], tasks: int) -> str:
    """Every method that ran on all ``seeds``."""
    head = "| method | last acc. (%) mean ± std over seeds | best of the mean curve (%) | "
    head += " | ".join(TASK_NAMES[:tasks]) + " (last, %) | " if tasks > 1 else ""
    head += "KB/client | CPU s/run |"
    cols = head.count("|") - 1
    rows = [head, "|" + "---|" * cols]
    for name, runs in res["methods"].items():
        if all(s in runs for s in seeds):
            rows.append(method_row(name, runs, seeds, tasks))
    return "\n".join(rows)


def per_client(runs: dict, seeds: list[str]) -> dict[str, np.ndarray]:
    """Per-client final accuracies by seed (Potara's merged model for Potara)."""
    return {s: np.asarray(runs[s].get("pc_merged", runs[s]["per_client"])) for s in seeds}


def diff_line(res: dict, a: str, b: str, seeds: list[str], tasks: int) -> str:
    """``a`` minus ``b``: paired per-client bootstrap 95% CI (points), overall and per task."""
    pa, pb = per_client(res["methods"][a], seeds), per_client(res["methods"][b], seeds)
    mean, lo, hi = protocol.paired_ci([pa[s] - pb[s] for s in seeds])
    out = f"{a} − {b}: {100 * mean:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] points"
    if tasks > 1:
        parts = []
        for t in range(tasks):
            m, lo_t, hi_t = protocol.paired_ci([pa[s][t::tasks] - pb[s][t::tasks] for s in seeds])
            parts.append(f"{TASK_NAMES[t]} {100 * m:+.1f} [{100 * lo_t:+.1f}, {100 * hi_t:+.1f}]")
        out += "; per task: " + ", ".join(parts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--tasks", type=int, default=1, help="number of tasks (client k has task k %% tasks)")
    ap.add_argument("--diff", action="append", default=[], help="a:b, the paired CI of a minus b")
    ap.add_argument("--merged-out", default=None, help="write the merged results here (for protocol.py)")
    args = ap.parse_args()
    res = merge(args.results)
    seeds = args.seeds.split(",")
    if args.merged_out:
        Path(args.merged_out).write_text(json.dumps(res))
    print(methods_table(res, seeds, args.tasks))
    print()
    for spec in args.diff:
        a, b = spec.split(":")
        print(diff_line(res, a, b, seeds, args.tasks))


if __name__ == "__main__":
    main()
