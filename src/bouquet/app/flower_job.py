"""A Flower run's job, rebuilt deterministically in every process from the run config.

The ServerApp and every ClientApp receive the same ``context.run_config``; from it each builds the
experiment, the federated dataset and the algorithm exactly as the local engine does
(``experiment.build_algorithm``: seeded model construction), so the initial model is identical
everywhere without shipping it. Built jobs are cached per process and, on the nodes, per Flower run: a
long-lived node worker (``bouquet.flower.node_worker``) serves many messages of many runs, so every cache is
keyed on what it depends on: the run config, the experiment file's path and modification time (an edited
file, or another run's FAB, is read again), and the node's run id for the jobs and data directories (each run
reads its data afresh, once).

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
    packed       true: tensors travel to and from bouquet's ClientApps packed, one record per message
                 (``flower.records.pack``); false: one Array per tensor, Flower's layout (stock apps always get it)
    fold-evaluation  true: round N's evaluation travels with round N + 1's train messages to bouquet's nodes (one
                 exchange per round, the same records); false: Flower's ``Strategy.start`` loop (train, then evaluate)
    checkpoint-dir  where the ServerApp saves its state every ``run.checkpoint_every`` rounds and resumes from
    node-state-dir  where nodes without a ``state-dir`` node config keep their clients' states (per partition)
    run-id       names the run for checkpoints and node states (kept by ``bouquet run --resume``; "": Flower's)

A SuperNode started with ``--node-config "data-dir=DIR"`` serves the clients of its own directory
(``data.node_dir``) instead of rebuilding the experiment's dataset; the ServerApp builds no dataset when
every node describes its data in the query handshake (``flower.discovery``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..checks import ConfigError
from ..data.federated import DatasetInfo, FederatedDataset
from ..data.node_dir import NodeData, load_node_dir
from ..flower.job import FlowerJob, FlowerSettings
from .config import Experiment, apply_overrides, load_raw, parse_experiment, resolved_dict, with_run
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
    "packed": True,
    "fold-evaluation": True,
    "checkpoint-dir": "",
    "node-state-dir": "",
    "run-id": "",
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
                          round_timeout=float(rc["round-timeout"]), node_wait=float(rc["node-wait"]),
                          packed=_flag(rc["packed"]), fold_evaluation=_flag(rc["fold-evaluation"]))


def _flag(value: Any) -> bool:
    """A run-config boolean (TOML true/false, or its text in a cache key)."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


# A job's cache key: what picks the experiment, then the settings ``settings`` reads (``_job`` splits them apart)
_EXPERIMENT_KEYS = ("config", "experiment", "set", "algorithm", "seed")
_SETTING_KEYS = ("out", "min-replies", "round-timeout", "node-wait", "packed", "fold-evaluation")


def _key(run_config: dict) -> tuple:
    """The cache key of a run config; a ``config`` file enters as its resolved path and modification time."""
    rc = with_defaults(run_config)
    key = [str(rc[k]) for k in _EXPERIMENT_KEYS + _SETTING_KEYS]
    if key[0] and not key[1]:
        path = _find(key[0]).resolve()
        key[0] = f"{path}@{path.stat().st_mtime_ns}"
    return tuple(key)


def load_job(run_config: dict, run_id: int | None = None) -> FlowerJob:
    """The job of a run config, cached per process and ``run_id`` (a node's Flower run: built once per run)."""
    return _load(_key(run_config), run_id)


@lru_cache(maxsize=4)
def _experiment(key: tuple) -> tuple[Experiment, str, int]:
    """The experiment (one seed), the algorithm's name and the seed of a run config key (no data built)."""
    config, text, sets, algorithm, seed, *_ = key
    if text:
        raw = tomllib.loads(text)
    elif config:
        raw = load_raw(config.rpartition("@")[0])
    else:
        raise ConfigError("run config: set 'config' (a TOML path) or 'experiment' (TOML text)")
    overrides = [s.strip() for s in sets.split(";") if s.strip()]
    exp = parse_experiment(apply_overrides(raw, overrides))
    name = algorithm or exp.algorithms[0]
    if name not in exp.algo:
        raise ConfigError(f"algorithm: unknown algorithm {name!r}")
    seed_i = int(seed) if int(seed) >= 0 else exp.run.seeds[0]
    return with_run(exp, seeds=[seed_i]), name, seed_i


def experiment_of(run_config: dict) -> tuple[Experiment, str, int]:
    """(experiment, algorithm, seed) of a run config, parsed once per process."""
    return _experiment(_key(run_config))


def run_name(run_config: dict, flower_run_id: int) -> str:
    """The name of a run, under which nodes keep its client states and the server its checkpoints: the
    (experiment, algorithm, seed) and ``run-id`` (our CLI's, kept by a resumed run), else Flower's run id."""
    exp, name, seed = experiment_of(run_config)
    rid = str(run_config.get("run-id", "")) or f"flower-{flower_run_id}"
    blob = json.dumps({"experiment": resolved_dict(exp), "algorithm": name, "seed": seed, "run": rid},
                      sort_keys=True, default=str)
    return f"{name}-seed{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _job(key: tuple, info: DatasetInfo, data: FederatedDataset | None = None,
         ids: tuple[int, ...] | None = None) -> FlowerJob:
    exp, name, seed = _experiment(key)
    alg, base = build_algorithm(exp, info, name, seed)
    rc = dict(zip(_SETTING_KEYS, key[len(_EXPERIMENT_KEYS):], strict=True))
    return FlowerJob(name=name, seed=seed, alg=alg, spec=exp.run.spec(), info=info, base_params=base,
                     robust=exp.robust, settings=settings(rc), data=data, ids=ids,
                     meta={"experiment": resolved_dict(exp), "name": exp.name})


@lru_cache(maxsize=2)  # a worker serving two runs at once; older runs' data is let go
def _load(key: tuple, run_id: int | None) -> FlowerJob:
    exp, _, seed = _experiment(key)
    data = dataset_for_seed(exp, seed)
    return _job(key, data.info(), data)


def server_job(run_config: dict, info: DatasetInfo) -> FlowerJob:
    """The ServerApp's job: the experiment's algorithm on the federation the nodes described (no rows)."""
    return _job(_key(run_config), info)


@lru_cache(maxsize=4)
def node_dir(path: str, run_id: int | None = None) -> NodeData:
    """A SuperNode's own data directory, read once per process and ``run_id``."""
    return load_node_dir(path)


def node_job(run_config: dict, path: str, num_clients: int, total_examples: int,
             run_id: int | None = None) -> FlowerJob:
    """The job of a node serving its own directory, in a federation of ``num_clients`` clients (cached per
    process and ``run_id``)."""
    return _node_job(_key(run_config), path, num_clients, total_examples, run_id)


@lru_cache(maxsize=2)
def _node_job(key: tuple, path: str, num_clients: int, total_examples: int, run_id: int | None) -> FlowerJob:
    nd = node_dir(path, run_id)
    if nd.num_clients is not None and nd.num_clients != num_clients:
        raise ConfigError(f"data-dir: {path} is a partition of {nd.num_clients} clients; the experiment has "
                          f"{num_clients} (data.num_clients)")
    if max(nd.ids) >= num_clients:
        raise ConfigError(f"data-dir: {path} holds client {max(nd.ids)}; the experiment has {num_clients} clients")
    d = nd.data
    counts = torch.zeros(3, num_clients, dtype=torch.long)  # train, test, cluster; other nodes' clients: 0
    for cid, c in zip(nd.ids, d.clients, strict=True):
        counts[:, cid] = torch.tensor([c.num_train, c.num_test, c.cluster])
    info = DatasetInfo(d.name, tuple(d.input_shape), d.num_outputs, d.objective, d.num_clusters, counts[0], counts[1],
                       counts[2], tuple(d.clients[0].y_train.shape[1:]), total_train=total_examples)
    return _job(key, info, d, nd.ids)
