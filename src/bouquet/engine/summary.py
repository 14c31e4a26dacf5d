"""A run's summary, written once for every engine: last and best evaluation, bytes, parameter counts.

``RunLog`` follows the round records of one (algorithm, seed); ``summary`` turns it into the entry of
``summary.json``; ``aggregate_seeds`` gives the mean and spread over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..algorithms import Algorithm
from .evaluation import personalized_params
from .rounds import RunState


def metric_name(objective: str) -> str:
    """The evaluation metric of an objective: accuracy (classification), mse (regression), perplexity (LM)."""
    return {"classification": "accuracy", "language_modeling": "perplexity"}.get(objective, "mse")


def is_better(metric: str, a: float, b: float) -> bool:
    """Higher accuracy, lower error."""
    return a > b if metric == "accuracy" else a < b


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation over seeds."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


@dataclass
class RunLog:
    """The records of one run so far (kept in memory when ``keep``), with its last and best evaluations.

    A checkpoint keeps only last, best and the count of rejected updates (``snapshot``): the records
    themselves go to ``metrics.jsonl``, so that a checkpoint's size does not grow with the run.
    """

    metric: str
    records: list[dict] = field(default_factory=list)
    last: dict | None = None
    best: dict | None = None
    keep: bool = True
    rejected: int = 0

    def add(self, record: dict) -> None:
        if self.keep:
            self.records.append(record)
        self.rejected += len(record.get("rejected", []))
        ev = record.get("eval")
        if ev is None:
            return
        point = {"round": record["round"], **{k: v for k, v in ev.items() if k != "metric"}}
        self.last = point
        if self.best is None or is_better(self.metric, ev["mean"], self.best["mean"]):
            self.best = point

    def snapshot(self) -> dict:
        """What a checkpoint keeps of the log (not the records)."""
        return {"best": self.best, "last": self.last, "rejected": self.rejected}

    @staticmethod
    def restore(metric: str, snap: dict, keep: bool = False) -> RunLog:
        """The log of a checkpoint (format 2 checkpoints held the records: the rejected count comes from them)."""
        rejected = snap.get("rejected")
        if rejected is None:
            rejected = sum(len(r.get("rejected", [])) for r in snap.get("records", []))
        return RunLog(metric, [], snap["last"], snap["best"], keep=keep, rejected=rejected)


def param_counts(alg: Algorithm, state: RunState, base: int) -> dict:
    """Parameters of one client's personalized model, what is sent, and overhead over the base model."""
    cs0 = {k: v[:1] for k, v in state.clients.items()}
    per_client = sum(v[0].numel() for v in personalized_params(alg, state.server, cs0, 1).values())
    down = sum(v.numel() for v in alg.broadcast(state.server).values())
    counts = {"base": base, "per_client": int(per_client), "downloaded": int(down),
              "overhead": per_client / base - 1 if base else 0.0}
    counts.update(alg.param_counts)
    return counts


_EMPTY = {"round": 0, "mean": math.nan, "std": math.nan, "loss": math.nan, "per_cluster": {}}


def summary(alg: Algorithm, seed: int, log: RunLog, state: RunState, counts: dict, wall: float,
            training_path: str, extra: dict | None = None) -> dict:
    """The summary.json entry of one (algorithm, seed)."""
    last, best = log.last or _EMPTY, log.best or _EMPTY
    return {
        "algorithm": alg.name, "seed": seed, "metric": log.metric, "rounds": state.round,
        "last": {k: last[k] for k in ("round", "mean", "std", "loss", "per_cluster")},
        "best": {k: best[k] for k in ("round", "mean", "std", "per_cluster")},
        "bytes_up": state.bytes_up, "bytes_down": state.bytes_down,
        "mb_per_round": (state.bytes_up + state.bytes_down) / max(state.round, 1) / 1e6,
        "params": counts, "wall_seconds": wall, "local_training": training_path,
        "rejected_updates": log.rejected,
        "extra": extra or {},
    }


def aggregate_seeds(runs: list[dict]) -> dict:
    """Mean/std over seeds of last and best scores; bytes and parameters from the first seed."""
    first = runs[0]
    last_m, last_s = mean_std([r["last"]["mean"] for r in runs])
    best_m, best_s = mean_std([r["best"]["mean"] for r in runs])
    client_std = sum(r["last"]["std"] for r in runs) / len(runs)
    return {
        "metric": first["metric"],
        "last": {"mean": last_m, "std": last_s, "client_std_mean": client_std},
        "best": {"mean": best_m, "std": best_s},
        "mb_per_round": first["mb_per_round"], "params": first["params"],
        "wall_seconds": sum(r["wall_seconds"] for r in runs) / len(runs),
        "per_seed": runs,
    }
