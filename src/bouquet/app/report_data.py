"""Run directories read back for reports: per-algorithm evaluation curves, final per-client scores, routers."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import ConfigError
from ..engine.summary import mean_std


@dataclass
class Run:
    """One run directory: its resolved config, its metric records and its summary."""

    path: Path
    config: dict
    records: list[dict]
    summary: dict

    @property
    def name(self) -> str:
        """The experiment's name (the directory's name when the summary has none)."""
        return str(self.summary.get("name") or self.path.name)


@dataclass
class Method:
    """One algorithm of one run, as the figures and tables need it."""

    label: str
    name: str
    run: Run
    metric: str
    result: dict  # summary["algorithms"][name]
    #: seed -> [(round, cumulative MB per client, mean score)] at evaluation rounds
    curves: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)
    #: seed -> every client's score at the last evaluation
    final_clients: dict[int, list[float]] = field(default_factory=dict)
    #: seed -> each client's routed choice (argmax adaptor), for routed methods
    router: dict[int, list[int]] = field(default_factory=dict)
    #: seed -> [(round, 0, router ARI)] at evaluation rounds, for routed methods (the curves' layout)
    ari: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        """True clusters of the data (client k is in cluster k mod C)."""
        n = self.run.config.get("data", {}).get("num_clusters")
        if isinstance(n, int) and n >= 1:
            return n
        clusters = self.result.get("per_seed", [{}])[0].get("last", {}).get("per_cluster", {})
        return max(len(clusters), 1)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: not a readable JSON file ({err.__class__.__name__})") from None
    if not isinstance(value, dict) or not isinstance(value.get("algorithms"), dict):
        raise ConfigError(f"{path}: expected a summary written by 'bouquet run' (no 'algorithms' table)")
    return value


def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{i}: not a JSON record") from None
    return records


def load_run(path: str | Path) -> Run:
    """Read a run directory written by ``bouquet run``; a missing directory or summary is a ConfigError."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{p}: no such run directory")
    if not (p / "summary.json").is_file():
        raise ConfigError(f"{p}: no summary.json; expected a run directory written by 'bouquet run'")
    summary = _read_json(p / "summary.json")
    config: dict = {}
    if (p / "config.toml").is_file():
        try:
            config = tomllib.loads((p / "config.toml").read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{p / 'config.toml'}: not valid TOML ({err.__class__.__name__})") from None
    return Run(p, config, _read_records(p / "metrics.jsonl"), summary)


def _num_clients(run: Run, records: list[dict]) -> int:
    n = run.config.get("data", {}).get("num_clients")
    if isinstance(n, int) and n >= 1:
        return n
    sizes = [len(r["eval"].get("per_client", [])) for r in records if "eval" in r]
    return max([*sizes, 1])


def methods(runs: list[Run]) -> list[Method]:
    """Every algorithm of every run; an algorithm found in several runs is labelled with its run's name."""
    counts: dict[str, int] = {}
    for run in runs:
        for name in run.summary["algorithms"]:
            counts[name] = counts.get(name, 0) + 1
    out = []
    for run in runs:
        for name, res in run.summary["algorithms"].items():
            label = name if counts[name] == 1 else f"{name} ({run.name})"
            m = Method(label, name, run, str(res.get("metric", "score")), res)
            recs = [r for r in run.records if r.get("algorithm") == name]
            per_client = _num_clients(run, recs)
            for r in recs:
                ev = r.get("eval")
                if not ev or ev.get("mean") is None:
                    continue
                mb = r.get("bytes_total", 0) / per_client / 1e6
                m.curves.setdefault(int(r["seed"]), []).append((int(r["round"]), mb, float(ev["mean"])))
                if ev.get("per_client"):
                    m.final_clients[int(r["seed"])] = [float(v) for v in ev["per_client"]]
                if ev.get("router_ari") is not None:
                    m.ari.setdefault(int(r["seed"]), []).append((int(r["round"]), 0.0, float(ev["router_ari"])))
            for s in res.get("per_seed", []):
                choice = (s.get("extra") or {}).get("router_clusters")
                if isinstance(choice, list) and choice:
                    m.router[int(s.get("seed", len(m.router)))] = [int(c) for c in choice]
            out.append(m)
    return out


def mean_band(curves: dict[int, list[tuple[int, float, float]]]) -> tuple[list[int], list[float], list[float],
                                                                           list[float]]:
    """Rounds evaluated in every seed, with the mean MB per client, mean score and std over seeds at each."""
    if not curves:
        return [], [], [], []
    by_seed = [{r: (mb, v) for r, mb, v in c} for c in curves.values()]
    rounds = sorted(set.intersection(*(set(d) for d in by_seed)))
    mbs, means, stds = [], [], []
    for r in rounds:
        mean, std = mean_std([d[r][1] for d in by_seed])
        means.append(mean)
        stds.append(std)
        mbs.append(sum(d[r][0] for d in by_seed) / len(by_seed))
    return rounds, mbs, means, stds
