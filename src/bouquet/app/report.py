"""The results table printed at the end of a run (one row per algorithm)."""

from __future__ import annotations


def _fmt(m: float, s: float, pct: bool) -> str:
    if pct:
        return f"{100 * m:.2f} ± {100 * s:.2f}"
    return f"{m:.4f} ± {s:.4f}"


def results_table(summary: dict) -> str:
    """A plain-text table with one row per algorithm: last and best score, bytes, parameters."""
    rows = []
    for name, res in summary["algorithms"].items():
        pct = res["metric"] == "accuracy"
        rows.append([
            name,
            _fmt(res["last"]["mean"], res["last"]["std"], pct),
            _fmt(res["last"]["client_std_mean"], 0.0, pct).split(" ±")[0],
            _fmt(res["best"]["mean"], res["best"]["std"], pct),
            f"{res['mb_per_round']:.3f}",
            f"{res['params']['per_client']:,}",
            f"{100 * res['params']['overhead']:+.1f}%",
            f"{res['wall_seconds']:.1f}",
        ])
    metric = next(iter(summary["algorithms"].values()))["metric"] if summary["algorithms"] else "score"
    unit = " (%)" if metric == "accuracy" else ""
    header = ["algorithm", f"last {metric}{unit}", "client std", f"best {metric}{unit}", "MB/round",
              "params/client", "overhead", "seconds"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    seeds = summary.get("seeds", [])
    out.append(f"(mean ± std over {len(seeds)} seed(s) {seeds}; score of every client's personalized model "
               f"on its own test split, example-weighted over all clients)")
    return "\n".join(out)
