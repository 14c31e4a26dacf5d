"""``bouquet export RUN_DIR --client K --out DIR``: one client's personalized model as a peft adapter
(``--node-state DIR --config EXP``: from a SuperNode's state directory, on the node).

The algorithm is rebuilt from the run's config and seed, its final state read from the run's last
checkpoint, and ``engine.peft_export`` collapses the client's adaptors into one LoRA per layer. Runs on a
Hugging Face model also keep every client's adapter under ``RUN_DIR/adapters/<algorithm>-seed<S>/``.
"""

from __future__ import annotations

from pathlib import Path

from ..checks import ConfigError
from ..engine.checkpoint import CheckpointDir
from ..engine.peft_export import export_client, peft_export, write_peft_adapter
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


def export_node(state_dir: str | Path, config: str | Path, client: int, out: str | Path, algorithm: str | None = None,
                seed: int | None = None, data_dir: str | None = None, run: str | None = None) -> Path:
    """Write client ``client``'s personalized model from a SuperNode's state directory (on the node: the model
    never left it), with the experiment ``config`` the run used and the node's ``data_dir`` if it has one."""
    if not Path(config).is_file():
        raise ConfigError(f"--config: {config} is not a file; expected the run's experiment TOML")
    from .flower_export import node_model  # Flower is an optional extra: only this path needs it

    run_config = {"config": str(Path(config).resolve()), "algorithm": algorithm or "",
                  "seed": -1 if seed is None else seed}
    job, params = node_model(run_config, state_dir, client, data_dir, run)
    ex = peft_export(job.alg, params, job.client_rows(client)[0].x[:1])
    return write_peft_adapter(out, ex.layers, base_model=ex.base_model, task_type=ex.task_type,
                              modules_to_save=ex.modules_to_save)
