"""Run an experiment: every algorithm and seed on the local engine, with run-directory outputs.

Layout of a run directory::

    config.toml      the resolved experiment
    fingerprint.json SHA-256 of the resolved experiment and the package version (app/rundir.py), also in
                     every checkpoint: --resume refuses an edited config.toml
    metrics.jsonl    one line per (algorithm, seed, round): train loss, bytes, and at evaluation
                     rounds the mean/std/per-cluster/per-client scores; appended as rounds end, each
                     checkpoint records its run's segment of it (app/metrics_file.py)
    summary.json     last and best per algorithm (mean/std over seeds), bytes, parameters
    checkpoints/     <algorithm>-seed<seed>-r<round>.ckpt, the last two per run (see engine/checkpoint.py)
    diagnostics/     <algorithm>-seed<seed>.json for merging methods (Potara): per client lambda, its terms,
                     and score / NLL along a lambda grid on the evaluation split (named in the file)
    adapters/        <algorithm>-seed<seed>/client_<k>: each client's peft adapter, for Hugging Face models
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import torch

from ..algorithms import ALGORITHMS
from ..checks import ConfigError
from ..data.federated import FederatedDataset
from ..engine.checkpoint import CheckpointDir, RunInterrupted, StopRequest, rng_state, set_rng_state
from ..engine.lambda_oracle import closed_form_lambdas, merge_diagnostics
from ..engine.peft_export import export_every_client, is_hf_template
from ..engine.rounds import RunState
from ..engine.simulator import Simulator
from ..engine.summary import RunLog, aggregate_seeds, param_counts, summary
from ..files import DirLock, LockHeld, WriteError, atomic_write_json, atomic_write_toml, os_error_reason
from .config import Experiment, load_experiment, require_distinct, resolved_dict, with_run
from .experiment import build_algorithm, dataset_for_seed
from .metrics_file import MetricsFile
from .rundir import check_config, read_fingerprint, stamp, write_fingerprint


def simulator(exp: Experiment, data: FederatedDataset, name: str, seed: int) -> tuple[Simulator, int]:
    """The seeded algorithm of ``name`` on ``data`` in a simulator; returns it with the base parameter count."""
    alg, base = build_algorithm(exp, data, name, seed)
    return Simulator(alg, data, exp.run.spec(), seed=seed, robust=exp.robust), base


def run_one(exp: Experiment, data: FederatedDataset, name: str, seed: int,
            on_round: Callable[[dict], None] | None = None, checkpoints: CheckpointDir | None = None,
            resume: dict | None = None, stop: StopRequest | None = None,
            metrics: MetricsFile | None = None) -> tuple[dict, list[dict]]:
    """One algorithm, one seed: returns its summary and its metric records.

    With ``checkpoints``, the run is saved every ``run.checkpoint_every`` rounds, at the end (marked
    finished, with the summary) and when ``stop`` is requested (then RunInterrupted is raised).
    ``resume`` (a checkpoint) continues where it stopped: the algorithm is rebuilt from its seed as usual,
    then every state and RNG is restored. With ``metrics`` each record is appended to it (and the records
    returned are empty); each checkpoint then records the segment of metrics.jsonl that belongs to it.
    """
    sim, base = simulator(exp, data, name, seed)
    state = sim.init_state()
    counts = param_counts(sim.alg, state, base)
    log = RunLog(sim.metric, keep=metrics is None)
    wall_before = 0.0
    if resume is not None:
        known = {f.name for f in fields(RunState)}
        state = RunState(**{k: _to_device(v, sim.device) for k, v in resume["state"].items() if k in known})
        log, wall_before = RunLog.restore(sim.metric, resume, keep=metrics is None), resume["wall"]
        set_rng_state(resume["rng"])
    tag = checkpoint_tag(name, seed)
    every = exp.run.checkpoint_every
    start = time.perf_counter()

    def save(result: dict | None = None) -> Path | None:
        if checkpoints is None:
            return None
        snap = {"version": 3, "algorithm": name, "seed": seed, "round": state.round, "finished": result is not None,
                "state": {f.name: getattr(state, f.name) for f in fields(state)}, "rng": rng_state(),
                **log.snapshot(), "metrics": metrics.mark() if metrics is not None else None,
                "summary": result, "wall": wall_before + time.perf_counter() - start}
        return checkpoints.save(tag, state.round, snap, before=metrics.sync if metrics is not None else None)

    while state.round < exp.run.rounds:
        state, rec = sim.run_round(state)
        rec = {"algorithm": name, "seed": seed, **rec}
        if exp.run.is_eval_round(state.round):
            rec["eval"] = {"metric": sim.metric, **sim.evaluate(state)}
        log.add(rec)
        if metrics is not None:
            metrics.append(rec)
        if on_round:
            on_round(rec)
        if stop is not None and stop.requested and state.round < exp.run.rounds:
            path = save()
            if checkpoints is not None:
                checkpoints.wait()
            where = f"checkpoint {path}" if path else "no checkpoint (checkpointing is off)"
            raise RunInterrupted(f"{stop.reason}: {name} seed {seed} stopped after round {state.round} of "
                                 f"{exp.run.rounds}; {where}", stop.exit_code)
        if every and state.round % every == 0 and state.round < exp.run.rounds:
            save()
    wall = wall_before + time.perf_counter() - start
    extra = sim.alg.report(state.server, state.clients, data.clusters) if sim.alg.report else {}
    result = summary(sim.alg, seed, log, state, counts, wall, sim.training_path, extra)
    if checkpoints is not None and sim.alg.merging is not None:  # Potara's lambda, its terms and curve
        write_merge_diagnostics(sim, state, data, checkpoints.dir.parent / "diagnostics" / f"{tag}.json")
    if checkpoints is not None and is_hf_template(sim.alg.model):  # every client's peft adapter, kept in the run
        export_every_client(sim.alg, state.server, state.clients, data.clients[0].x_train[:1],
                            checkpoints.dir.parent / "adapters" / tag, data.num_clients)
    save(result)
    if checkpoints is not None:
        checkpoints.wait()
    return result, log.records


def write_merge_diagnostics(sim: Simulator, state: RunState, data: FederatedDataset, path: Path) -> None:
    """Per client: lambda, its terms and the score / NLL along a lambda grid on the evaluation split.

    The split is named in the file: ``validation`` (rows carved from training rows, ``data.validation``),
    where the oracle lambda may be used to choose; ``test``, where it is a diagnostic only.
    """
    grid = tuple(round(0.1 * i, 1) for i in range(11))
    diag = merge_diagnostics(sim.alg, state.server, state.clients, sim.test, grid,
                             higher_is_better=sim.metric == "accuracy", chunk=sim.spec.eval_chunk)
    diag.update(split=data.meta.get("split", "test"), metric=sim.metric,
                lambda_closed_form=closed_form_lambdas(sim.alg, state.server, state.clients).tolist())
    atomic_write_json(path, diag)


def checkpoint_tag(name: str, seed: int) -> str:
    """File-name stem of one (algorithm, seed) run's checkpoints."""
    return f"{name}-seed{seed}"


def _to_device(tree, device: torch.device):
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree.to(device) if isinstance(tree, torch.Tensor) else tree


def run_experiment(exp: Experiment, out_dir: str | Path, algorithms: list[str] | None = None,
                   progress: bool = True, resume: bool = False, superlink: str | None = None,
                   allow_changes: list[str] | None = None) -> dict:
    """Run every (algorithm, seed); write config.toml, fingerprint.json, metrics.jsonl, summary.json; return summary.

    Checkpoints go to ``<out_dir>/checkpoints``. With ``resume``, finished (algorithm, seed) runs are
    taken from their final checkpoints and the interrupted one continues from its latest valid one; each
    checkpoint's config fingerprint must match ``exp`` but for ``allow_changes`` (keys of SAFE_CHANGES).
    Ctrl-C or SIGTERM stops after the current round, writes a checkpoint and raises RunInterrupted (whose
    ``exit_code`` is 130 or 143).
    """
    out = Path(out_dir)
    names = algorithms or exp.algorithms
    exp = _with_algorithms(exp, names)
    _check_device(exp)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create the run directory ({os_error_reason(err, out)})") from None
    with _locked(out, "--resume" if resume else "--out"), _write_errors(out):
        if not resume and CheckpointDir(out / "checkpoints").any():
            raise ConfigError(f"--out {out}: holds checkpoints of an earlier run; continue it with "
                              f"'bouquet run --resume {out}' or choose another directory")
        if exp.run.engine != "local":  # Flower runtimes: the same run directory, computed by Flower (docs/flower.md)
            from .flower_run import run as run_flower  # needs the optional flwr package

            write_fingerprint(out, stamp(resolved_dict(exp)))
            return run_flower(exp, out, names, exp.run.engine, superlink=superlink, progress=progress)
        return _run_local(exp, out, progress, resume, allow_changes)


@contextmanager
def _write_errors(out: Path) -> Iterator[None]:
    """A file of the run that cannot be written (disk full, read-only, ...) is a ConfigError naming it."""
    try:
        yield
    except WriteError as err:
        raise ConfigError(f"{err}; what was written before (checkpoints, metrics.jsonl, summary.json) is intact: "
                          f"fix this, then continue with: bouquet run --resume {out}") from None


@contextmanager
def _locked(out: Path, option: str) -> Iterator[None]:
    """Hold ``out``'s DirLock: one writer per run directory; another holder is a ConfigError naming its PID."""
    try:
        lock = DirLock(out).acquire()
    except LockHeld as err:
        holder = f"PID {err.pid}" if err.pid else "another process"
        raise ConfigError(f"{option} {out}: in use by another bouquet run ({holder}, lock file {err.path}); wait "
                          f"for it to end or choose another directory") from None
    except OSError as err:
        raise ConfigError(f"{option} {out}: cannot lock the run directory ({os_error_reason(err, out)})") from None
    try:
        yield
    finally:
        lock.release()


MKL_REPRODUCIBLE = "AUTO,STRICT"


def deterministic_mode(threads: int) -> None:
    """torch's deterministic algorithms and a fixed thread count; warns when MKL may still pick its kernels
    by memory alignment (MKL reads MKL_CBWR once, when it loads: it must be set before Python starts)."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    if os.environ.get("MKL_CBWR", "").upper() != MKL_REPRODUCIBLE:
        warnings.warn(f"run.deterministic: set MKL_CBWR={MKL_REPRODUCIBLE} in the environment before starting "
                      "bouquet; without it MKL may choose kernels by memory alignment and results can differ "
                      "in the last bits between processes", UserWarning, stacklevel=2)


def _run_local(exp: Experiment, out: Path, progress: bool, resume: bool, allow_changes: list[str] | None) -> dict:
    """The local engine's part of run_experiment, with the run directory locked."""
    names = exp.algorithms
    current = resolved_dict(exp)
    record = stamp(current, allow_changes)
    ckpts = CheckpointDir(out / "checkpoints", stamp=record, background=True)
    if exp.run.deterministic:
        deterministic_mode(exp.run.threads or 1)
    elif exp.run.threads:
        torch.set_num_threads(exp.run.threads)
    if not resume:
        atomic_write_toml(out / "config.toml", current)
    write_fingerprint(out, record)
    summary: dict = {"name": exp.name, "seeds": list(exp.run.seeds), "algorithms": {}}
    metrics = MetricsFile(out / "metrics.jsonl", resume)
    try:
        with StopRequest() as stop:
            for name in names:
                runs = [_run_seed(exp, out, name, seed, ckpts, metrics, stop, progress, resume, current, record)
                        for seed in exp.run.seeds]
                summary["algorithms"][name] = aggregate_seeds(runs)
                atomic_write_json(out / "summary.json", summary)
        metrics.finish()
        metrics.close()
    finally:
        ckpts.close()
        metrics.close(quiet=True)  # after an error (raised already): close what can be closed
    return summary


def _run_seed(exp: Experiment, out: Path, name: str, seed: int, ckpts: CheckpointDir, metrics: MetricsFile,
              stop: StopRequest, progress: bool, resume: bool, current: dict, record: dict) -> dict:
    """One (algorithm, seed) of _run_local: taken from its final checkpoint, continued, or run; returns its summary.

    Its records go to ``metrics`` as one segment: a checkpoint's segment is put in place (checked against
    the checkpoint: a checkpoint whose records are missing is skipped), then the run appends the rest.
    """
    found = ckpts.latest(checkpoint_tag(name, seed), check=metrics.problem) if resume else None
    snap = _checked(found, current, record["accepted_changes"], exp.run.rounds)
    if snap is not None:
        metrics.place(metrics.locate(snap))
        if snap["finished"] and snap["round"] == exp.run.rounds:
            return snap["summary"]
    metrics.open_segment(continued=snap is not None)
    data = dataset_for_seed(exp, seed)
    bar = _progress(exp, name, seed, snap["round"] if snap else 0) if progress else None
    try:
        s, _ = run_one(with_run(exp, seeds=[seed]), data, name, seed, on_round=bar.update if bar else None,
                       checkpoints=ckpts, resume=snap, stop=stop, metrics=metrics)
    except RunInterrupted as err:
        raise RunInterrupted(f"{err}; continue with: bouquet run --resume {out}", err.exit_code) from None
    finally:
        if bar:
            bar.close()
    return s


def _checked(found: tuple[dict, Path] | None, current: dict, allowed: list[str], rounds: int) -> dict | None:
    """The checkpoint of ``found`` after checking that it belongs to ``current`` (ConfigError if not)."""
    if found is None:
        return None
    snap, path = found
    if "fingerprint" in snap:  # checkpoints written before fingerprints (version 2 without one) pass
        check_config(f"--resume: checkpoint {path}", snap, current, allowed)
    if snap["round"] > rounds:
        raise ConfigError(f"run.rounds: expected at least {snap['round']} (checkpoint {path} is at round "
                          f"{snap['round']}), got {rounds}")
    return snap


def resume_experiment(run_dir: str | Path, progress: bool = True, allow_changes: list[str] | None = None,
                      superlink: str | None = None) -> dict:
    """Continue the run in ``run_dir`` (its config.toml and checkpoints) to the end; return the summary.

    ``config.toml`` must still match the run's fingerprint, but for the keys in ``allow_changes``. A Flower
    run continues on its SuperLink (``flower.json``; ``superlink`` names another) from the server checkpoints.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run directory")
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"--resume {run_dir}: no config.toml; expected a directory written by 'bouquet run'")
    exp = load_experiment(run_dir / "config.toml")
    if exp.run.engine != "local":
        recorded = read_fingerprint(run_dir)
        if recorded is not None:
            check_config(f"--resume {run_dir}", recorded, resolved_dict(exp), [])
        from .flower_run import resume as resume_flower  # needs the optional flwr package

        with _locked(run_dir, "--resume"), _write_errors(run_dir):
            return resume_flower(run_dir, exp, superlink, progress)
    elif superlink:
        raise ConfigError(f"--superlink: {run_dir} is a run of the local engine; drop --superlink")
    exp = _with_algorithms(exp, exp.algorithms)
    _check_device(exp)
    with _locked(run_dir, "--resume"), _write_errors(run_dir):
        CheckpointDir(run_dir / "checkpoints").remove_temporaries()
        CheckpointDir(run_dir).remove_temporaries()  # half-written metrics.jsonl / summary.json of a killed run
        if not CheckpointDir(run_dir / "checkpoints").any():  # nothing computed yet: nothing to mix either
            print(f"bouquet: note: --resume {run_dir}: no checkpoint yet (the run stopped before its first one); "
                  f"starting it afresh as configured in {run_dir / 'config.toml'}", file=sys.stderr, flush=True)
            return _run_local(exp, run_dir, progress, False, None)
        allowed = list(allow_changes or [])
        recorded = read_fingerprint(run_dir)
        if recorded is not None:
            changed = check_config(f"--resume {run_dir}", recorded, resolved_dict(exp), allowed)
            allowed = sorted({*allowed, *changed, *recorded.get("accepted_changes", [])})
        return _run_local(exp, run_dir, progress, True, allowed)


def _check_device(exp: Experiment) -> None:
    if exp.run.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: expected 'cpu' or 'auto' (no CUDA device is available), "
                              f"got {exp.run.device!r}")
        index = int(exp.run.device.split(":")[1]) if ":" in exp.run.device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"run.device: expected cuda:0..cuda:{torch.cuda.device_count() - 1}, "
                              f"got {exp.run.device!r}")


def _with_algorithms(exp: Experiment, names: list[str]) -> Experiment:
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        raise ConfigError(f"--algorithms: unknown algorithm {unknown[0]!r}; expected one of {sorted(ALGORITHMS)}")
    require_distinct(names, "--algorithms")
    return replace(exp, algorithms=list(names))


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
