"""A Flower run's job, rebuilt deterministically in every process from the run config.

The ServerApp and every ClientApp receive the same ``context.run_config``; from it each builds the
experiment, the federated dataset and the algorithm exactly as the local engine does
(``experiment.build_algorithm``: seeded model construction), so the initial model is identical
everywhere without shipping it. Built jobs are cached per process.

Run config keys (``[tool.flwr.app.config]`` in ``pyproject.toml``, override with
``flwr run . --run-config "algorithm='floral' set='run.rounds=3'"``):

    config       path of the experiment TOML (absolute, or relative to the app directory / cwd)
    experiment   the experiment TOML itself (used instead of ``config`` when not empty)
    set          ``;``-separated ``key=value`` overrides, as ``bouquet run --set``
    algorithm    which algorithm of the experiment ("" = the first of ``algorithms``)
    seed         which seed (-1 = the first of ``run.seeds``)
    out          run directory the ServerApp writes (metrics.jsonl, summary.json); "" = none
    min-replies  fewest accepted client updates to aggregate a round (else the round is skipped)
    round-timeout  seconds the server waits for replies of one round
    node-wait    seconds the server waits for SuperNodes to connect before the first round
"""

from __future__ import annotations

import sys
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..checks import ConfigError
from ..flower.job import FlowerJob, FlowerSettings
from .config import apply_overrides, load_raw, parse_experiment, resolved_dict, with_run
from .experiment import build_algorithm, dataset_for_seed

DEFAULTS: dict[str, Any] = {
    "config": "",
    "experiment": "",
    "set": "",
    "algorithm": "",
    "seed": -1,
    "out": "",
    "min-replies": 1,
    "round-timeout": 600.0,
    "node-wait": 120.0,
}
#: ``[tool.flwr.app.config]`` of pyproject.toml: what a run config without ``config`` or ``experiment`` (e.g.
#: Flower's ``run_simulation`` with none) starts from (tests keep the two equal)
APP_DEFAULTS: dict[str, Any] = {**DEFAULTS, "config": "configs/synthetic_linear.toml",
                                "set": "run.rounds=5;run.eval_every=1", "algorithm": "fedavg"}
#: the source checkout (an editable install), where the app's default config lives
_CHECKOUT = Path(__file__).resolve().parents[3]


def _find(path: str) -> Path:
    """Resolve a config path: absolute, else relative to cwd or to an app directory on sys.path."""
    p = Path(path)
    if p.is_absolute() or p.is_file():
        return p
    # Flower puts the installed app (FAB) directory on sys.path before loading the app.
    for entry in [*sys.path, str(_CHECKOUT)]:
        if entry and (Path(entry) / p).is_file():
            return Path(entry) / p
    raise ConfigError(f"config: experiment file {path!r} not found (cwd {Path.cwd()}, nor in the app directory)")


def with_defaults(run_config: dict) -> dict:
    """The run config over the defaults: the app's (pyproject) when it names no experiment, else ``DEFAULTS``."""
    named = run_config.get("config") or run_config.get("experiment")
    return {**(DEFAULTS if named else APP_DEFAULTS), **{k: v for k, v in run_config.items() if named or v != ""}}


def settings(run_config: dict) -> FlowerSettings:
    """The Flower-specific part of the run config."""
    rc = with_defaults(run_config)
    return FlowerSettings(out=str(rc["out"]), min_replies=int(rc["min-replies"]),
                          round_timeout=float(rc["round-timeout"]), node_wait=float(rc["node-wait"]))


def _key(run_config: dict) -> tuple:
    rc = with_defaults(run_config)
    return tuple(str(rc[k]) for k in ("config", "experiment", "set", "algorithm", "seed", "out", "min-replies",
                                      "round-timeout", "node-wait"))


def load_job(run_config: dict) -> FlowerJob:
    """The job of a run config (cached per process: ClientApps may serve many messages)."""
    return _load(_key(run_config))


@lru_cache(maxsize=4)
def _load(key: tuple) -> FlowerJob:
    config, text, sets, algorithm, seed, *flower = key
    if text:
        raw = tomllib.loads(text)
    elif config:
        raw = load_raw(_find(config))
    else:
        raise ConfigError("run config: set 'config' (a TOML path) or 'experiment' (TOML text)")
    overrides = [s.strip() for s in sets.split(";") if s.strip()]
    exp = parse_experiment(apply_overrides(raw, overrides))
    name = algorithm or exp.algorithms[0]
    if name not in exp.algo:
        raise ConfigError(f"algorithm: unknown algorithm {name!r}")
    seed_i = int(seed) if int(seed) >= 0 else exp.run.seeds[0]
    exp = with_run(exp, seeds=[seed_i])
    data = dataset_for_seed(exp, seed_i)
    alg, base = build_algorithm(exp, data, name, seed_i)
    rc = dict(zip(("out", "min-replies", "round-timeout", "node-wait"), flower, strict=True))
    return FlowerJob(name=name, seed=seed_i, alg=alg, spec=exp.run.spec(), data=data, base_params=base,
                     robust=exp.robust, settings=settings(rc), meta={"experiment": resolved_dict(exp),
                                                                      "name": exp.name})
