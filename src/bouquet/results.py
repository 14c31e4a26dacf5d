"""Run-directory files written atomically, and the results table printed at the end of a run."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_toml(path: str | Path, obj: dict) -> None:
    atomic_write_bytes(path, tomli_w.dumps(obj).encode())


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Rewrite a whole JSON-lines file atomically (so a crash never leaves half a line)."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation over seeds."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


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
