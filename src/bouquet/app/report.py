"""The results table printed at the end of a run (one row per algorithm), and its rows for other reports."""

from __future__ import annotations

import math


def _fmt(m: float, s: float, pct: bool, seeds: int) -> str:
    """``m ± s`` (in % for accuracy); one seed has no spread, so the value alone."""
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    scale, digits = (100, 2) if pct else (1, 4)
    if seeds <= 1 or s is None or math.isnan(s):
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def router_ari(res: dict) -> float | None:
    """Mean over seeds of the router's adjusted Rand index against the true clusters; None when not routed."""
    values = [r["extra"]["router_ari"] for r in res.get("per_seed", [])
              if isinstance(r.get("extra"), dict) and r["extra"].get("router_ari") is not None]
    return sum(values) / len(values) if values else None


HEADER = ["algorithm", "last {m}", "client std", "best {m}", "MB/round", "params/client", "overhead", "router ARI",
          "seconds"]


def table_header(summary: dict) -> list[str]:
    """Column names of the results table (the metric and its unit filled in)."""
    algs = summary.get("algorithms", {})
    metric = next(iter(algs.values()))["metric"] if algs else "score"
    unit = " (%)" if metric == "accuracy" else ""
    return [h.format(m=f"{metric}{unit}") for h in HEADER]


def table_rows(summary: dict) -> list[list[str]]:
    """One row of formatted cells per algorithm, in the order of :func:`table_header`."""
    rows = []
    for name, res in summary["algorithms"].items():
        pct = res["metric"] == "accuracy"
        seeds = len(res.get("per_seed", [])) or len(summary.get("seeds", []))
        ari = router_ari(res)
        rows.append([
            name,
            _fmt(res["last"]["mean"], res["last"]["std"], pct, seeds),
            _fmt(res["last"]["client_std_mean"], 0.0, pct, 1),
            _fmt(res["best"]["mean"], res["best"]["std"], pct, seeds),
            f"{res['mb_per_round']:.3f}",
            f"{res['params']['per_client']:,}",
            f"{100 * res['params']['overhead']:+.1f}%",
            "-" if ari is None else f"{ari:.2f}",
            f"{res['wall_seconds']:.1f}",
        ])
    return rows


def results_table(summary: dict) -> str:
    """A plain-text table with one row per algorithm: last and best score, bytes, parameters, router ARI."""
    header, rows = table_header(summary), table_rows(summary)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append(table_note(summary))
    return "\n".join(out)


def table_note(summary: dict) -> str:
    """The line under the table: what the numbers are."""
    seeds = summary.get("seeds", [])
    spread = f"mean ± std over {len(seeds)} seeds {seeds}" if len(seeds) != 1 else f"seed {seeds[0]}"
    return (f"({spread}; score of every client's personalized model "
            f"on its own test split, example-weighted over all clients; router ARI: routed methods' "
            f"argmax choices against the true clusters)")
