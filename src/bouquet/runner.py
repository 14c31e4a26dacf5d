"""Run an experiment: every algorithm and seed on the local engine, with run-directory outputs.

Layout of a run directory::

    config.toml      the resolved experiment
    metrics.jsonl    one line per (algorithm, seed, round): train loss, bytes, and at evaluation
                     rounds the mean/std/per-cluster/per-client scores
    summary.json     last and best per algorithm (mean/std over seeds), bytes, parameters
    checkpoints/     <algorithm>-seed<seed>-r<round>.ckpt, the last two per run (see engine/checkpoint.py)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from .algorithms import ALGORITHMS, Algorithm
from .config import ConfigError, Experiment, load_experiment, resolved_dict, with_run
from .data import build_dataset
from .data.federated import FederatedDataset
from .engine.checkpoint import CheckpointDir, RunInterrupted, StopRequest, rng_state, set_rng_state
from .engine.evaluation import personalized_params
from .engine.simulator import RunSpec, SimState, Simulator
from .models import build_model
from .results import atomic_write_json, atomic_write_toml, mean_std, write_jsonl


def build_algorithm(exp: Experiment, data: FederatedDataset, name: str, seed: int) -> tuple[Algorithm, int]:
    """Seeded model construction then the algorithm; returns it with the base model's parameter count."""
    # Every global RNG is seeded, so a run's checkpoints (which hold them all) are reproducible too.
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # Builders raise ValueError for option values that cannot work with this data or model (an adapter
    # target matching no layer, an image model on vectors): user errors, reported like config errors.
    try:
        model = build_model(exp.model.name, data.input_shape, data.num_outputs, **exp.model.options)
    except ValueError as err:
        raise ConfigError(f"model.name: {exp.model.name!r} cannot be built for {data.name!r}: {err}") from None
    base = sum(p.numel() for p in model.parameters())
    try:
        alg = ALGORITHMS[name].build(model, data, exp, exp.algo[name])
    except ValueError as err:
        raise ConfigError(f"algo.{name}: {err}") from None
    return alg, base


def run_spec(exp: Experiment, alg: Algorithm, seed: int) -> RunSpec:
    r = exp.run
    return RunSpec(rounds=r.rounds, clients_per_round=r.clients_per_round, batch_size=r.batch_size,
                   local_epochs=r.local_epochs, local_steps=r.local_steps, eval_every=r.eval_every, seed=seed,
                   vectorized=r.vectorized, hand_batched=r.hand_batched,
                   eval_chunk=r.eval_chunk, shuffle=r.shuffle, device=r.device,
                   finetune_epochs=alg.hparams.get("finetune_epochs", 0),
                   finetune_lr=alg.hparams.get("finetune_lr"), robust=exp.robust)


def param_counts(alg: Algorithm, sim: Simulator, state: SimState, base: int) -> dict:
    """Parameters of one client's personalized model, what is sent, and overhead over the base model."""
    cs0 = {k: v[:1] for k, v in state.clients.items()}
    per_client = sum(v[0].numel() for v in personalized_params(alg, state.server, cs0, 1).values())
    down = sum(v.numel() for v in alg.broadcast(state.server).values())
    counts = {"base": base, "per_client": int(per_client), "downloaded": int(down),
              "overhead": per_client / base - 1 if base else 0.0}
    counts.update(alg.hparams.get("param_counts", {}))
    return counts


def is_better(metric: str, a: float, b: float) -> bool:
    return a > b if metric == "accuracy" else a < b


def run_one(exp: Experiment, data: FederatedDataset, name: str, seed: int,
            on_round: Callable[[dict], None] | None = None, checkpoints: CheckpointDir | None = None,
            resume: dict | None = None, on_checkpoint: Callable[[list[dict]], None] | None = None,
            stop: StopRequest | None = None) -> tuple[dict, list[dict]]:
    """One algorithm, one seed: returns its summary and its metric records.

    With ``checkpoints``, the run is saved every ``run.checkpoint_every`` rounds, at the end (marked
    finished, with the summary) and when ``stop`` is requested (then RunInterrupted is raised);
    ``on_checkpoint(records)`` follows each save. ``resume`` (a checkpoint) continues where it stopped:
    the algorithm is rebuilt from its seed as usual, then every state and RNG is restored.
    """
    alg, base = build_algorithm(exp, data, name, seed)
    sim = Simulator(alg, data, run_spec(exp, alg, seed))
    state = sim.init_state()
    metric = "accuracy" if data.task == "classification" else "mse"
    counts = param_counts(alg, sim, state, base)
    records: list[dict] = []
    best: dict | None = None
    last: dict | None = None
    wall_before = 0.0
    if resume is not None:
        state = SimState(**{k: _to_device(v, sim.device) for k, v in resume["state"].items()})
        records, best, last, wall_before = list(resume["records"]), resume["best"], resume["last"], resume["wall"]
        set_rng_state(resume["rng"])
    tag = checkpoint_tag(name, seed)
    every = exp.run.checkpoint_every
    start = time.perf_counter()

    def save(summary: dict | None = None) -> Path | None:
        if checkpoints is None:
            return None
        snap = {"version": 1, "algorithm": name, "seed": seed, "round": state.round, "finished": summary is not None,
                "state": {f.name: getattr(state, f.name) for f in fields(state)}, "rng": rng_state(),
                "records": records, "best": best, "last": last, "summary": summary,
                "wall": wall_before + time.perf_counter() - start}
        path = checkpoints.save(tag, state.round, snap)
        if on_checkpoint:
            on_checkpoint(records)
        return path

    while state.round < exp.run.rounds:
        new_state, rec = sim.run_round(state)
        rec = {"algorithm": name, "seed": seed, **rec}
        if new_state.round % exp.run.eval_every == 0 or new_state.round == exp.run.rounds:
            ev = sim.evaluate(new_state)
            rec["eval"] = {"metric": metric, **ev}
            last = {"round": new_state.round, **ev}
            if best is None or is_better(metric, ev["mean"], best["mean"]):
                best = {"round": new_state.round, **ev}
        records.append(rec)
        state = new_state
        if on_round:
            on_round(rec)
        if stop is not None and stop.requested and state.round < exp.run.rounds:
            path = save()
            where = f"checkpoint {path}" if path else "no checkpoint (checkpointing is off)"
            raise RunInterrupted(f"interrupted: {name} seed {seed} stopped after round {state.round} of "
                                 f"{exp.run.rounds}; {where}")
        if every and state.round % every == 0 and state.round < exp.run.rounds:
            save()
    wall = wall_before + time.perf_counter() - start
    assert last is not None and best is not None
    summary = {
        "algorithm": name, "seed": seed, "metric": metric, "rounds": state.round,
        "last": {k: last[k] for k in ("round", "mean", "std", "loss", "per_cluster")},
        "best": {k: best[k] for k in ("round", "mean", "std", "per_cluster")},
        "bytes_up": state.bytes_up, "bytes_down": state.bytes_down,
        "mb_per_round": (state.bytes_up + state.bytes_down) / max(state.round, 1) / 1e6,
        "params": counts, "wall_seconds": wall, "local_training": sim.training_path,
        "rejected_updates": sum(len(r.get("rejected", [])) for r in records),
        "extra": report(state.server, state.clients) if (report := alg.hparams.get("report")) else {},
    }
    save(summary)
    return summary, records


def checkpoint_tag(name: str, seed: int) -> str:
    """File-name stem of one (algorithm, seed) run's checkpoints."""
    return f"{name}-seed{seed}"


def _to_device(tree, device: torch.device):
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree.to(device) if isinstance(tree, torch.Tensor) else tree


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


def run_experiment(exp: Experiment, out_dir: str | Path, algorithms: list[str] | None = None,
                   progress: bool = True, resume: bool = False, superlink: str | None = None) -> dict:
    """Run every (algorithm, seed); write config.toml, metrics.jsonl, summary.json; return the summary.

    Checkpoints go to ``<out_dir>/checkpoints``. With ``resume``, finished (algorithm, seed) runs are
    taken from their final checkpoints and the interrupted one continues from its latest valid one.
    Ctrl-C stops after the current round, writes a checkpoint and raises RunInterrupted.
    """
    out = Path(out_dir)
    names = algorithms or exp.algorithms
    exp = _with_algorithms(exp, names)
    _check_device(exp)
    if exp.run.engine != "local":  # Flower runtimes: the same run directory, computed by Flower (docs/flower.md)
        from .flower.engine import run as run_flower

        return run_flower(exp, out, names, exp.run.engine, superlink=superlink, progress=progress)
    ckpts = CheckpointDir(out / "checkpoints")
    if not resume and ckpts.any():
        raise ConfigError(f"--out {out}: holds checkpoints of an earlier run; continue it with "
                          f"'bouquet run --resume {out}' or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    if exp.run.threads:
        torch.set_num_threads(exp.run.threads)
    if not resume:
        atomic_write_toml(out / "config.toml", resolved_dict(exp))
    all_records: list[dict] = []
    summary: dict = {"name": exp.name, "seeds": list(exp.run.seeds), "algorithms": {}}
    with StopRequest() as stop:
        for name in names:
            runs = []
            for seed in exp.run.seeds:
                found = ckpts.latest(checkpoint_tag(name, seed)) if resume else None
                snap = found[0] if found else None
                if snap is not None and snap["finished"]:
                    s, recs = snap["summary"], snap["records"]
                else:
                    data = build_dataset(_data_for_seed(exp, seed))
                    bar = _progress(exp, name, seed, snap["round"] if snap else 0) if progress else None
                    done = list(all_records)
                    try:
                        s, recs = run_one(with_run(exp, seeds=[seed]), data, name, seed,
                                          on_round=bar.update if bar else None, checkpoints=ckpts, resume=snap,
                                          on_checkpoint=lambda r, done=done: write_jsonl(out / "metrics.jsonl",
                                                                                         done + r),
                                          stop=stop)
                    except RunInterrupted as err:
                        raise RunInterrupted(f"{err}; continue with: bouquet run --resume {out}") from None
                    finally:
                        if bar:
                            bar.close()
                runs.append(s)
                all_records += recs
                write_jsonl(out / "metrics.jsonl", all_records)
            summary["algorithms"][name] = aggregate_seeds(runs)
            atomic_write_json(out / "summary.json", summary)
    return summary


def resume_experiment(run_dir: str | Path, progress: bool = True) -> dict:
    """Continue the run in ``run_dir`` (its config.toml and checkpoints) to the end; return the summary."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run directory")
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"--resume {run_dir}: no config.toml; expected a directory written by 'bouquet run'")
    if not CheckpointDir(run_dir / "checkpoints").any():
        raise ConfigError(f"--resume {run_dir}: no checkpoints to resume from (run.checkpoint_every = 0, "
                          f"or the run stopped before its first checkpoint)")
    exp = load_experiment(run_dir / "config.toml")
    if exp.run.engine != "local":
        raise ConfigError(f"--resume {run_dir}: checkpoints are written by the local engine only; this run used "
                          f"run.engine = {exp.run.engine!r}")
    CheckpointDir(run_dir / "checkpoints").remove_temporaries()
    CheckpointDir(run_dir).remove_temporaries()  # half-written metrics.jsonl / summary.json of a killed run
    return run_experiment(exp, run_dir, progress=progress, resume=True)


def _check_device(exp: Experiment) -> None:
    if exp.run.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: expected 'cpu' (no CUDA device is available), got {exp.run.device!r}")
        index = int(exp.run.device.split(":")[1]) if ":" in exp.run.device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"run.device: expected cuda:0..cuda:{torch.cuda.device_count() - 1}, "
                              f"got {exp.run.device!r}")


def _with_algorithms(exp: Experiment, names: list[str]) -> Experiment:
    from dataclasses import replace

    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        from .config import ConfigError

        raise ConfigError(f"--algorithms: unknown algorithm {unknown[0]!r}; expected one of {sorted(ALGORITHMS)}")
    return replace(exp, algorithms=list(names))


def _data_for_seed(exp: Experiment, seed: int):
    """The data seed follows the run seed, so repetitions differ in data draws too (as in the paper)."""
    from dataclasses import replace

    return replace(exp.data, seed=exp.data.seed + seed)


class _Bar:
    """tqdm progress bar showing round, train loss, last evaluation score and MB sent."""

    def __init__(self, total: int, desc: str, initial: int = 0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, initial=initial)
        self.score = math.nan

    def update(self, rec: dict) -> None:
        if "eval" in rec:
            self.score = rec["eval"]["mean"]
        loss = rec["train_loss"] if rec["train_loss"] is not None else math.nan
        self.bar.set_postfix(loss=f"{loss:.4f}", score=f"{self.score:.4f}",
                             MB=f"{rec['bytes_total'] / 1e6:.1f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _progress(exp: Experiment, name: str, seed: int, initial: int = 0) -> _Bar:
    return _Bar(exp.run.rounds, f"{name} seed {seed}", initial)
