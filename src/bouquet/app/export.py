"""``bouquet export RUN_DIR --client K --out DIR``: one client's personalized model as a peft adapter.

The algorithm is rebuilt from the run's config and seed, its final state read from the run's last
checkpoint, and ``engine.peft_export`` collapses the client's adaptors into one LoRA per layer. Runs on a
Hugging Face model also keep every client's adapter under ``RUN_DIR/adapters/<algorithm>-seed<S>/``.
"""

from __future__ import annotations

from pathlib import Path

from ..checks import ConfigError
from ..engine.checkpoint import CheckpointDir
from ..engine.peft_export import export_client
from .config import load_experiment
from .experiment import build_algorithm, dataset_for_seed


def _one(values: list, given, what: str, option: str):
    if given is not None:
        if given not in values:
            raise ConfigError(f"{option}: expected one of {values} (the run's {what}), got {given!r}")
        return given
    if len(values) != 1:
        raise ConfigError(f"{option}: the run has several {what} ({values}); choose one")
    return values[0]


def export_run(run_dir: str | Path, client: int, out: str | Path, algorithm: str | None = None,
               seed: int | None = None) -> Path:
    """Write client ``client``'s personalized model of a finished (or checkpointed) run to ``out``."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"export: {run_dir} has no config.toml; expected a directory written by 'bouquet run'")
    exp = load_experiment(run_dir / "config.toml")
    name = _one(list(exp.algorithms), algorithm, "algorithms", "--algorithm")
    seed = _one(list(exp.run.seeds), seed, "seeds", "--seed")
    found = CheckpointDir(run_dir / "checkpoints").latest(f"{name}-seed{seed}")
    if found is None:
        raise ConfigError(f"export: {run_dir}/checkpoints has no checkpoint of {name} seed {seed}")
    state = found[0]["state"]
    data = dataset_for_seed(exp, seed)
    if not 0 <= client < data.num_clients:
        raise ConfigError(f"--client: expected 0..{data.num_clients - 1}, got {client}")
    alg, _ = build_algorithm(exp, data, name, seed)
    return export_client(alg, state["server"], state["clients"], client, data.clients[client].x_train[:1], out)
