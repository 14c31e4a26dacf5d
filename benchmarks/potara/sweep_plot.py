"""The R_f sweep figure: accuracy against bytes per client for Potara and the matched-round baselines.

Each results.json is one run_potara.py run at one R_f (``--set algo.potara.federated_rounds=R``, the
baselines stopped at R with ``--matched``); a method's point is its mean over seeds, with the std as
the error bar. Prints the table and writes a small PNG.

    python benchmarks/potara/sweep_plot.py /tmp/sweep/rf*/results.json --out docs/potara_rf_sweep.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METHODS = ("potara", "fedit_ft", "ditto", "fedit")


def points(paths: list[str]) -> dict[str, list[tuple[int, float, float, float]]]:
    """method -> [(R_f, KB per client, mean accuracy, std over seeds)] sorted by R_f."""
    out: dict[str, list] = {m: [] for m in METHODS}
    for path in paths:
        res = json.loads(Path(path).read_text())
        rf = int(next(o for o in res["overrides"] if o.startswith("algo.potara.federated_rounds=")).split("=")[1])
        for m in METHODS:
            runs = list(res["methods"].get(m, {}).values())
            if runs:
                acc = [r["accuracy"] for r in runs]
                out[m].append((rf, runs[0]["bytes_per_client"] / 1e3, float(np.mean(acc)), float(np.std(acc))))
    return {m: sorted(v) for m, v in out.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    pts = points(args.results)
    print("| method | " + " | ".join(f"R_f = {p[0]}" for p in pts["potara"]) + " |")
    print("|---|" + "---|" * len(pts["potara"]))
    for m, v in pts.items():
        print(f"| {m} | " + " | ".join(f"{100 * a:.2f} ± {100 * s:.2f} ({kb:,.0f} KB)" for _, kb, a, s in v) + " |")
    import matplotlib  # noqa: PLC0415 (a plotting dependency only this script needs)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    for m, v in pts.items():
        kb, acc, std = (np.array([p[i] for p in v]) for i in (1, 2, 3))
        ax.errorbar(kb, 100 * acc, yerr=100 * std, marker="o", capsize=2, label=m)
        for p in v:
            ax.annotate(str(p[0]), (p[1], 100 * p[2]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("KB per client (down + up), labels: R_f")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Fashion-MNIST class skew, alpha 0.5, 16 clients", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
