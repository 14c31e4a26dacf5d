"""Experiments as TOML, validated into typed, frozen config objects (the schema of every table).

Every error names the offending key (``run.rounds``, ``algo.floral.rank``) and what was expected:
unknown keys, wrong types and out-of-range values are all errors, never silently ignored. Each table
parses into the dataclass that lives beside the code it configures: ``[data]`` -> ``DataSpec``,
``[run]`` -> ``RunConfig`` (the engine's ``RunSpec`` plus seeds, engine, threads, checkpoints),
``[train]`` -> ``TrainConfig``, ``[server]`` -> ``ServerConfig``, ``[robust]`` -> ``RobustConfig``,
``[pretrain]`` -> ``PretrainConfig``, ``[algo.<name>]`` -> the algorithm's options class.
"""

from __future__ import annotations

import inspect
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..algorithms import ALGORITHMS, ServerConfig, TrainConfig
from ..checks import ConfigError, require
from ..data.federated import DataError
from ..data.spec import DataSpec
from ..engine.robust import RobustConfig
from ..engine.spec import RunSpec
from ..models import MODELS
from .init_adapter import InitConfig
from .pretrain import PretrainConfig
from .schema import _coerce, parse_section, plain

ENGINES = ("local", "flower-sim", "flower")


@dataclass(frozen=True)
class RunConfig(RunSpec):
    """``[run]``: the engine's ``RunSpec`` plus what a whole experiment adds."""

    #: one repetition of every algorithm per seed (data partition, init and sampling change with it)
    seeds: list[int] = field(default_factory=lambda: [0])
    #: 'local' (in-process simulator), 'flower-sim' (Flower simulation) or 'flower' (a SuperLink)
    engine: str = "local"
    #: torch intra-op threads (None: torch's default)
    threads: int | None = None
    #: write a checkpoint every k rounds (0: only at the end of each run and on Ctrl-C)
    checkpoint_every: int = 10
    #: bit for bit across processes: torch's deterministic algorithms, `threads` (default 1) fixed, and MKL's
    #: reproducible code path (MKL_CBWR=AUTO,STRICT must be in the environment; docs/reliability.md)
    deterministic: bool = False

    def check(self, s: str) -> None:
        super().check(s)
        require(len(self.seeds) >= 1, f"{s}.seeds", "a non-empty list of integers", self.seeds)
        require(len(set(self.seeds)) == len(self.seeds), f"{s}.seeds", "distinct seeds (a repeated seed repeats "
                "the same run)", self.seeds)
        require(self.engine in ENGINES, f"{s}.engine", "'local', 'flower-sim' or 'flower'", self.engine)
        require(self.threads is None or self.threads >= 1, f"{s}.threads", "none or >= 1", self.threads)
        require(self.checkpoint_every >= 0, f"{s}.checkpoint_every", "an integer >= 0 (0: final checkpoint only)",
                self.checkpoint_every)

    def spec(self) -> RunSpec:
        """The engine's part of these settings."""
        names = RunSpec.__dataclass_fields__
        return RunSpec(**{k: getattr(self, k) for k in names})


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
    pretrain: PretrainConfig | None = None
    init: InitConfig = field(default_factory=InitConfig)
    raw: dict = field(default_factory=dict, compare=False)


TOP_LEVEL = ("name", "algorithms", "data", "model", "run", "train", "server", "algo", "robust", "pretrain", "init")


def _parse_model(values: Any) -> ModelConfig:
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


def parse_experiment(raw: dict) -> Experiment:
    """Validate a raw TOML mapping into an Experiment."""
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
    require_distinct(names, "algorithms")
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
        name=check_name(_coerce(raw.get("name", "experiment"), str, "name")),
        algorithms=names,
        data=data,
        model=_parse_model(raw["model"]),
        run=parse_section(RunConfig, raw["run"], "run"),
        train=parse_section(TrainConfig, raw["train"], "train"),
        server=parse_section(ServerConfig, raw.get("server", {}), "server"),
        algo=algo,
        robust=parse_section(RobustConfig, raw.get("robust", {}), "robust"),
        pretrain=parse_section(PretrainConfig, raw["pretrain"], "pretrain") if "pretrain" in raw else None,
        init=parse_section(InitConfig, raw.get("init", {}), "init"),
        raw=raw,
    )
    require(exp.run.clients_per_round <= exp.data.num_clients, "run.clients_per_round",
            f"at most data.num_clients ({exp.data.num_clients})", exp.run.clients_per_round)
    return exp


MAX_NAME = 100


def check_name(name: str) -> str:
    """A run name is one folder name (``runs/<name>-<time>``): printable, no path separator or '..', bounded."""
    what = "a run name (it names the folder runs/<name>-<time>)"
    if len(name) > MAX_NAME:
        raise ConfigError(f"name: expected {what} of at most {MAX_NAME} characters, got {len(name)} characters "
                          f"({name[:20]!r}...)")
    require(bool(name.strip()), "name", f"{what}, not empty", name)
    require(name.isprintable(), "name", f"{what} of printable characters", name)
    require("/" not in name and "\\" not in name, "name", f"{what} without path separators ('/' or '\\')", name)
    require(".." not in name, "name", f"{what} without '..'", name)
    return name


def require_distinct(names: list[str], key: str) -> None:
    """A list of algorithm names without repeats (ConfigError naming ``key`` and the repeated name)."""
    repeated = [n for i, n in enumerate(names) if n in names[:i]]
    if repeated:
        raise ConfigError(f"{key}: {repeated[0]!r} given twice; expected distinct algorithms")


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
    model = {"name": exp.model.name, **exp.model.options}
    extra = {"pretrain": plain(exp.pretrain)} if exp.pretrain is not None else {}
    if exp.init.peft_adapter is not None:
        extra["init"] = plain(exp.init)
    return {**extra,
        "name": exp.name, "algorithms": list(exp.algorithms), "data": plain(exp.data), "model": model,
        "run": plain(exp.run), "train": plain(exp.train), "server": plain(exp.server),
        "robust": plain(exp.robust), "algo": {n: plain(exp.algo[n]) for n in exp.algorithms if plain(exp.algo[n])},
    }


def with_run(exp: Experiment, **changes: Any) -> Experiment:
    """A copy of the experiment with run settings changed (e.g. the seed of one repetition)."""
    return replace(exp, run=replace(exp.run, **changes))
