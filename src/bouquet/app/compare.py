"""``bouquet compare``: runs grouped by method and seed from their configs, one comparison report over them.

A *method* is an algorithm with the config it ran under, less what cannot change its numbers (the run's
name, its list of algorithms and seeds, threads, checkpointing) and other algorithms' ``[algo.<name>]``
tables. One algorithm met under different configs gives several methods, labelled by the keys in which
those configs differ (``floral (algo.floral.router_temperature=2)``); the seeds of one method are pooled
over every run that holds it, and the same (method, seed) in two runs is an error naming both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checks import ConfigError
from ..engine.summary import aggregate_seeds
from .report import table_header, table_rows
from .report_data import Method, Run, load_run, methods
from .report_figures import write_figures
from .report_html import Table, write_pages
from .rundir import flatten

#: dotted keys that do not change what a run computes (ignored when runs are grouped into methods)
IGNORED = ("name", "algorithms", "run.seeds", "run.threads", "run.checkpoint_every")
_MAX_KEYS = 3


def relevant_config(config: dict, algorithm: str) -> dict[str, Any]:
    """The flat config keys that define ``algorithm``'s method: all but IGNORED and other algorithms' tables."""
    own = f"algo.{algorithm}."
    return {k: v for k, v in flatten(config).items()
            if k not in IGNORED and (not k.startswith("algo.") or k.startswith(own))}


def method_key(config: dict, algorithm: str) -> str:
    """A hashable identity of (algorithm, relevant config): equal keys are the same method."""
    return json.dumps([algorithm, relevant_config(config, algorithm)], sort_keys=True, default=str)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Each path as a run directory, or, for a directory holding run directories (a sweep), those inside."""
    out: list[Path] = []
    for path in paths:
        p = Path(path)
        inner = sorted(q for q in p.iterdir() if (q / "summary.json").is_file()) if p.is_dir() else []
        out += [p] if (p / "summary.json").is_file() or not inner else inner
    return out


def _show(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_UNSET = object()


@dataclass
class _Group:
    """One method: its algorithm, relevant config and the Methods (one per run) that hold its seeds."""

    algorithm: str
    config: dict[str, Any]
    parts: list[Method]


def _labels(groups: list[_Group]) -> list[str]:
    """The algorithm's name, with the differing config keys when one algorithm forms several methods."""
    labels = []
    for g in groups:
        same = [h for h in groups if h.algorithm == g.algorithm]
        if len(same) == 1:
            labels.append(g.algorithm)
            continue
        keys = sorted({k for h in same for k in h.config})
        differ = [k for k in keys if len({_show(h.config.get(k, _UNSET)) for h in same}) > 1]
        shown = [f"{k}={_show(g.config.get(k, _UNSET))}" for k in differ[:_MAX_KEYS]]
        more = f", +{len(differ) - _MAX_KEYS} more" if len(differ) > _MAX_KEYS else ""
        labels.append(f"{g.algorithm} ({', '.join(shown)}{more})")
    for i, label in enumerate(labels):  # keys cut by _MAX_KEYS could collide: fall back on the run's directory
        if labels.count(label) > 1:
            labels[i] = f"{label} [{groups[i].parts[0].run.path}]"
    return labels


def _merge(label: str, parts: list[Method]) -> Method:
    """One method's seeds from every run that holds it, as one Method (summary re-aggregated over seeds)."""
    first = parts[0]
    per_seed = sorted((s for m in parts for s in m.result.get("per_seed", [])), key=lambda s: s.get("seed", 0))
    merged = Method(label, first.name, first.run, first.metric, aggregate_seeds(per_seed) if per_seed else
                    first.result)
    for m in parts:
        merged.curves.update(m.curves)
        merged.final_clients.update(m.final_clients)
        merged.router.update(m.router)
    return merged


def _seeds(m: Method) -> list[int]:
    return [int(s.get("seed", i)) for i, s in enumerate(m.result.get("per_seed", []))]


def compare_methods(runs: list[Run]) -> list[Method]:
    """Every method of the runs, its seeds pooled over runs; a (method, seed) in two runs is a ConfigError."""
    groups: dict[str, _Group] = {}
    seen: dict[tuple[str, int], Path] = {}
    for m in methods(runs):
        key = method_key(m.run.config, m.name)
        for seed in _seeds(m):
            if (key, seed) in seen:
                raise ConfigError(f"compare: {m.name} seed {seed} is in both {seen[key, seed]} and {m.run.path} "
                                  f"with identical configs; pass only one of them")
            seen[key, seed] = m.run.path
        groups.setdefault(key, _Group(m.name, relevant_config(m.run.config, m.name), [])).parts.append(m)
    ordered = list(groups.values())
    return [_merge(label, g.parts) for label, g in zip(_labels(ordered), ordered, strict=True)]


def compare_tables(ms: list[Method]) -> list[Table]:
    """One paper-style table per metric: methods x (seeds, last and best mean ± std, MB/round, parameters)."""
    by_metric: dict[str, list[Method]] = {}
    for m in ms:
        by_metric.setdefault(m.metric, []).append(m)
    tables = []
    for metric, group in by_metric.items():
        summary = {"algorithms": {m.label: m.result for m in group}}
        header = table_header(summary)
        header = [header[0].replace("algorithm", "method"), "seeds", *header[1:]]
        rows = [[row[0], ",".join(map(str, _seeds(m))) or "-", *row[1:]]
                for m, row in zip(group, table_rows(summary), strict=True)]
        note = ("mean ± std over each method's seeds (one seed: its value); score of every client's personalized "
                "model on its own test split, example-weighted over all clients; MB/round: bytes up + down per "
                "round; overhead: parameters per client over the base model; router ARI: routed methods' argmax "
                "choices against the true clusters")
        tables.append((f"Methods by {metric}", header, rows, note))
    return tables


def sources_table(ms: list[Method], parts: dict[str, list[Path]]) -> Table:
    """Which run directories each method's seeds came from."""
    rows = [[m.label, ", ".join(str(p) for p in parts[m.label])] for m in ms]
    return ("Run directories", ["method", "run directories"], rows, "seeds of one method are pooled over these runs")


def write_compare(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the run directories, write the comparison's figures, report.md and report.html; return the HTML's path.

    ``out`` defaults to ``<first RUN_DIR>/compare``; a directory of run directories (a sweep) counts as them all.
    """
    if not run_dirs:
        raise ConfigError("RUN_DIR: expected at least one run directory")
    runs = [load_run(p) for p in find_runs(run_dirs)]
    ms = compare_methods(runs)
    if not ms:
        raise ConfigError(f"{runs[0].path}: summary.json lists no algorithms")
    sources: dict[str, list[Path]] = {}
    for m in ms:
        key = method_key(m.run.config, m.name)
        sources[m.label] = [r.path for r in runs if any(method_key(r.config, a) == key
                                                        for a in r.summary["algorithms"])]
    out_dir = Path(out) if out is not None else Path(run_dirs[0]) / "compare"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory")
    tables = [*compare_tables(ms), sources_table(ms, sources)]
    return write_pages(out_dir, "bouquet comparison", tables, write_figures(ms, out_dir))
