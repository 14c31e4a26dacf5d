"""Experiments as TOML, validated into typed, frozen config objects.

Every error names the offending key (``run.rounds``, ``algo.floral.rank``) and what was expected:
unknown keys, wrong types and out-of-range values are all errors, never silently ignored.
"""

from __future__ import annotations

import functools
import inspect
import math
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from .data.federated import DataError
from .data.spec import DataSpec


class ConfigError(ValueError):
    """A config value is unknown, ill-typed or out of range; the message starts with the key."""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            type(None): "none"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against a field type; ints are accepted for floats. Raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        inner = typing.get_args(tp)[0]
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # get_type_hints evaluates string annotations on every call: slow enough to matter for ~25 sections.
    return typing.get_type_hints(cls)


def parse_section(cls: type, values: Any, section: str):
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys, wrong types, missing required."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a table of options, got {values!r}")
    hints = _type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown option; expected one of {sorted(known)}")
    kwargs = {}
    for name, f in known.items():
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], f"{section}.{name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{section}.{name}: missing required option")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(section)
    return obj


def require(ok: bool, key: str, expected: str, got: Any) -> None:
    """Raise ConfigError ``key: expected ..., got ...`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


@dataclass(frozen=True)
class RunConfig:
    """How the federation is simulated."""

    rounds: int
    clients_per_round: int
    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    eval_every: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    engine: str = "local"
    #: all clients of a round in one vmapped step (true), one after another (false), or "auto": one after
    #: another for models with convolutions on CPU, where vmap's grouped convs are slower, vmapped otherwise
    vectorized: bool | str = "auto"
    #: MLP chains of algorithms with a closed-form loss train by engine/chain.py kernels (false: vmap + autograd)
    hand_batched: bool = True
    eval_chunk: int = 64
    shuffle: bool = True
    device: str = "cpu"
    threads: int | None = None
    #: write a checkpoint every k rounds (0: only at the end of each run and on Ctrl-C)
    checkpoint_every: int = 10

    def check(self, s: str) -> None:
        for k in ("rounds", "clients_per_round", "batch_size", "local_epochs", "eval_every", "eval_chunk"):
            require(getattr(self, k) >= 1, f"{s}.{k}", "an integer >= 1", getattr(self, k))
        require(self.local_steps is None or self.local_steps >= 1, f"{s}.local_steps", "none or >= 1",
                self.local_steps)
        require(len(self.seeds) >= 1, f"{s}.seeds", "a non-empty list of integers", self.seeds)
        require(self.vectorized in (True, False, "auto"), f"{s}.vectorized", "true, false or 'auto'",
                self.vectorized)
        require(self.engine in ("local", "flower-sim", "flower"), f"{s}.engine",
                "'local', 'flower-sim' or 'flower'", self.engine)
        require(self.device == "cpu" or self.device.startswith("cuda"), f"{s}.device", "'cpu' or 'cuda[:N]'",
                self.device)
        require(self.threads is None or self.threads >= 1, f"{s}.threads", "none or >= 1", self.threads)
        require(self.checkpoint_every >= 0, f"{s}.checkpoint_every", "an integer >= 0 (0: final checkpoint only)",
                self.checkpoint_every)


@dataclass(frozen=True)
class TrainConfig:
    """Client optimizer: plain SGD, fresh each round (as in FLoRAL's code)."""

    lr: float
    weight_decay: float = 0.0

    def check(self, s: str) -> None:
        require(self.lr > 0, f"{s}.lr", "a number > 0", self.lr)
        require(self.weight_decay >= 0, f"{s}.weight_decay", "a number >= 0", self.weight_decay)


@dataclass(frozen=True)
class ServerConfig:
    """Server optimizer on the pseudo-gradient: sgd (lr 1 = FedAvg) or adam (FedAdam)."""

    optimizer: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.0

    def check(self, s: str) -> None:
        require(self.optimizer in ("sgd", "adam"), f"{s}.optimizer", "'sgd' or 'adam'", self.optimizer)
        require(self.lr > 0, f"{s}.lr", "a number > 0", self.lr)
        require(0 <= self.momentum < 1, f"{s}.momentum", "a number in [0, 1)", self.momentum)


AGGREGATIONS = ("mean", "clip", "trimmed_mean", "median")
ATTACKS = ("none", "scale", "nan")


@dataclass(frozen=True)
class RobustConfig:
    """Defences against bad client updates (``[robust]``), and a simulated attack for experiments only.

    ``aggregation``: mean (the algorithm's own) | clip (each update's norm clipped to ``clip_norm``, or
    to the ``clip_quantile`` of the round's update norms when unset; 0.5 = median) | trimmed_mean
    (``trim_fraction`` cut from each end per coordinate) | median (coordinate-wise).
    ``max_update_norm`` rejects updates above it outright. ``attack`` makes a seeded ``attack_fraction``
    of clients send scaled (``attack_scale``) or NaN updates.
    """

    aggregation: str = "mean"
    clip_norm: float | None = None
    clip_quantile: float = 0.5
    trim_fraction: float = 0.1
    max_update_norm: float | None = None
    attack: str = "none"
    attack_fraction: float = 0.2
    attack_scale: float = 1e3

    def check(self, s: str) -> None:
        require(self.aggregation in AGGREGATIONS, f"{s}.aggregation", f"one of {list(AGGREGATIONS)}",
                self.aggregation)
        require(self.clip_norm is None or self.clip_norm > 0, f"{s}.clip_norm", "none or a number > 0",
                self.clip_norm)
        require(0 < self.clip_quantile <= 1, f"{s}.clip_quantile", "a number in (0, 1]", self.clip_quantile)
        require(0 <= self.trim_fraction < 0.5, f"{s}.trim_fraction", "a number in [0, 0.5)", self.trim_fraction)
        require(self.max_update_norm is None or self.max_update_norm > 0, f"{s}.max_update_norm",
                "none or a number > 0", self.max_update_norm)
        require(self.attack in ATTACKS, f"{s}.attack", f"one of {list(ATTACKS)}", self.attack)
        require(0 <= self.attack_fraction <= 1, f"{s}.attack_fraction", "a number in [0, 1]", self.attack_fraction)


@dataclass(frozen=True)
class ModelConfig:
    """Model name plus the factory's keyword options (checked against its signature)."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A whole experiment: data, model, run, optimizers, algorithms and their options."""

    name: str
    algorithms: list[str]
    data: DataSpec
    model: ModelConfig
    run: RunConfig
    train: TrainConfig
    server: ServerConfig
    algo: dict[str, Any]  # algorithm name -> its validated options dataclass
    robust: RobustConfig = field(default_factory=RobustConfig)
    pretrain: Any = None  # bouquet.pretrain.PretrainConfig from an optional [pretrain] table
    raw: dict = field(default_factory=dict, compare=False)


TOP_LEVEL = ("name", "algorithms", "data", "model", "run", "train", "server", "algo", "robust", "pretrain")


def _parse_model(values: Any) -> ModelConfig:
    from .models import MODELS

    if not isinstance(values, dict) or "name" not in values:
        raise ConfigError("model.name: missing required option")
    name = _coerce(values["name"], str, "model.name")
    if name not in MODELS:
        raise ConfigError(f"model.name: expected one of {sorted(MODELS)}, got {name!r}")
    params = inspect.signature(MODELS[name]).parameters
    allowed = [p for p in params if p not in ("input_shape", "num_outputs")]
    options = {k: v for k, v in values.items() if k != "name"}
    for key, v in options.items():
        if key not in allowed:
            raise ConfigError(f"model.{key}: unknown option for model {name!r}; expected one of {allowed}")
        default = params[key].default
        if default is not inspect.Parameter.empty and default is not None:
            v = _coerce(v, type(default), f"model.{key}")
            # Integer model options are widths or counts; float ones are rates (dropout).
            if isinstance(default, int) and not isinstance(default, bool):
                require(v >= 1, f"model.{key}", "an integer >= 1", v)
            elif isinstance(default, float):
                require(0 <= v < 1, f"model.{key}", "a number in [0, 1)", v)
    return ModelConfig(name, options)


def _parse_pretrain(raw: dict) -> Any:
    if "pretrain" not in raw:
        return None
    from .pretrain import PretrainConfig

    return parse_section(PretrainConfig, raw["pretrain"], "pretrain")


def parse_experiment(raw: dict) -> Experiment:
    """Validate a raw TOML mapping into an Experiment."""
    from .algorithms import ALGORITHMS

    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key}: unknown top-level key; expected one of {list(TOP_LEVEL)}")
    for key in ("data", "model", "run", "train"):
        if key not in raw:
            raise ConfigError(f"{key}: missing required table [{key}]")
    names = raw.get("algorithms", ["fedavg"])
    names = _coerce(names, list[str], "algorithms")
    for n in names:
        if n not in ALGORITHMS:
            raise ConfigError(f"algorithms: unknown algorithm {n!r}; expected one of {sorted(ALGORITHMS)}")
    try:
        data = DataSpec.from_dict(raw["data"]) if isinstance(raw["data"], dict) else None
    except (DataError, TypeError) as err:
        raise ConfigError(str(err)) from None
    if data is None:
        raise ConfigError("data: expected a table of options")
    algo_raw = raw.get("algo", {})
    if not isinstance(algo_raw, dict):
        raise ConfigError("algo: expected tables [algo.<name>]")
    for n in algo_raw:
        if n not in ALGORITHMS:
            raise ConfigError(f"algo.{n}: unknown algorithm; expected one of {sorted(ALGORITHMS)}")
    algo = {n: parse_section(spec.options, algo_raw.get(n, {}), f"algo.{n}") for n, spec in ALGORITHMS.items()}
    exp = Experiment(
        name=_coerce(raw.get("name", "experiment"), str, "name"),
        algorithms=names,
        data=data,
        model=_parse_model(raw["model"]),
        run=parse_section(RunConfig, raw["run"], "run"),
        train=parse_section(TrainConfig, raw["train"], "train"),
        server=parse_section(ServerConfig, raw.get("server", {}), "server"),
        algo=algo,
        robust=parse_section(RobustConfig, raw.get("robust", {}), "robust"),
        pretrain=_parse_pretrain(raw),
        raw=raw,
    )
    require(exp.run.clients_per_round <= exp.data.num_clients, "run.clients_per_round",
            f"at most data.num_clients ({exp.data.num_clients})", exp.run.clients_per_round)
    return exp


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value); the value is read as TOML, else as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of ``raw`` with ``--set`` overrides applied (new keys are validated later like any other)."""
    out = _deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a table")
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load_raw(path: str | Path) -> dict:
    """Read a TOML file; a missing file or a syntax error is a ConfigError naming the file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; expected a TOML config file")
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML ({err})") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{p}: cannot read as a UTF-8 TOML file ({err.__class__.__name__})") from None


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Load, override and validate an experiment file."""
    return parse_experiment(apply_overrides(load_raw(path), overrides or []))


def resolved_dict(exp: Experiment) -> dict:
    """The fully resolved experiment as a TOML-writable mapping (defaults filled in)."""

    def plain(obj: Any) -> Any:
        if is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in fields(obj) if getattr(obj, f.name) is not None}
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list | tuple):
            return [plain(v) for v in obj]
        return obj

    model = {"name": exp.model.name, **exp.model.options}
    extra = {"pretrain": plain(exp.pretrain)} if exp.pretrain is not None else {}
    return {**extra,
        "name": exp.name, "algorithms": list(exp.algorithms), "data": plain(exp.data), "model": model,
        "run": plain(exp.run), "train": plain(exp.train), "server": plain(exp.server),
        "robust": plain(exp.robust), "algo": {n: plain(exp.algo[n]) for n in exp.algorithms if plain(exp.algo[n])},
    }


def with_run(exp: Experiment, **changes: Any) -> Experiment:
    """A copy of the experiment with run settings changed (e.g. the seed of one repetition)."""
    return replace(exp, run=replace(exp.run, **changes))
