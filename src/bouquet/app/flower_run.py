"""``bouquet run --engine flower-sim | flower``: the run directory of the local engine, computed by Flower.

Each (algorithm, seed) is one Flower run of a generated app directory (``pyproject.toml`` with the
``[tool.flwr.app]`` tables, the experiment TOML inlined in the run config, so it travels with the
run to the SuperLink and every SuperNode). Round records and summaries come back as log lines of
``flwr run --stream``, which works wherever the SuperLink is.

- ``flower-sim``: a private SuperLink with the simulation runtime (Ray backend) on a free port,
  one simulated SuperNode per client unless told otherwise, stopped by PID at the end.
- ``flower``: an existing SuperLink: ``--superlink host:port`` (insecure) or the name of a
  connection of the Flower configuration (``$FLWR_HOME/config.toml``, where TLS is set up).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import tomli_w

from ..checks import ConfigError
from ..engine.summary import aggregate_seeds
from ..files import atomic_write_json, atomic_write_toml, write_jsonl
from ..flower.deploy import LocalFederation, flwr_run
from .config import Experiment, resolved_dict
from .flower_apps import FAILURE, RECORD, SUMMARY

COMPONENTS = {"serverapp": "bouquet.app.flower_apps:serverapp", "clientapp": "bouquet.app.flower_apps:clientapp"}


class FlowerRunError(RuntimeError):
    """``flwr run`` ended without the run's summary (the ServerApp failed; see its log lines)."""

    user_facing = True  # the CLI prints the message, not a traceback


def write_app(directory: str | Path, run_config: dict) -> Path:
    """A minimal Flower app directory whose components are bouquet's ServerApp and ClientApp."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    project = {"name": "bouquet-run", "version": "1.0.0", "description": "a bouquet experiment on Flower",
               "license": "Apache-2.0", "dependencies": ["bouquet[flower]"]}
    # the FAB needs one source file besides pyproject.toml; the code itself is the installed bouquet
    (d / "bouquet_run.py").write_text('"""Placeholder: the app\'s code is the installed bouquet package."""\n')
    doc = {"build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
           "project": project,
           "tool": {"flwr": {"app": {"publisher": "bouquet", "components": COMPONENTS, "config": run_config}}}}
    (d / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return d


def parse_output(text: str) -> tuple[list[dict], dict | None]:
    """Round records and the summary from the streamed log of one run."""
    records, summary = [], None
    for line in text.splitlines():
        if RECORD in line:
            records.append(json.loads(line.split(RECORD, 1)[1]))
        elif SUMMARY in line:
            summary = json.loads(line.split(SUMMARY, 1)[1])
    return records, summary


def parse_failure(text: str) -> str | None:
    """The ServerApp's one-line reason when the run failed (every round), from the streamed log."""
    return next((line.split(FAILURE, 1)[1].strip() for line in text.splitlines() if FAILURE in line), None)


def run_config_for(exp: Experiment, name: str, seed: int, **settings) -> dict:
    """The Flower run config of one (algorithm, seed) of ``exp``."""
    return {"experiment": tomli_w.dumps(resolved_dict(exp)), "algorithm": name, "seed": seed, **settings}


def run(exp: Experiment, out_dir: str | Path, algorithms: list[str], engine: str, superlink: str | None = None,
        progress: bool = True, num_supernodes: int | None = None, timeout: float = 24 * 3600.0,
        **settings) -> dict:
    """Run every (algorithm, seed) on Flower; write config.toml, metrics.jsonl, summary.json like the local engine.

    ``settings`` are run-config keys of ``bouquet.app.flower_job`` (``min-replies``, ``round-timeout``...).
    The ServerApp checkpoints into ``out_dir/checkpoints`` (the SuperLink's machine must see ``out_dir``);
    in a directory of an interrupted run (``flower.json`` present, see ``resume``) every (algorithm, seed)
    continues from its latest checkpoint, and finished ones are only read back.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_toml(out / "config.toml", resolved_dict(exp))
    state = _run_state(out, engine, superlink)
    superlink = state["superlink"]
    settings = {"checkpoint-dir": str((out / "checkpoints").resolve()), "run-id": state["run-id"], **settings}
    if engine == "flower-sim":  # simulated nodes keep their clients' states in the run directory
        settings.setdefault("node-state-dir", str((out / "node-state").resolve()))
    summary: dict = {"name": exp.name, "seeds": list(exp.run.seeds), "engine": engine, "algorithms": {}}
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bouquet-flower-") as tmp:
        fed = None
        try:
            if engine == "flower-sim":
                fed = LocalFederation(tmp, simulation=True).start()
                connection, env = "bouquet", fed.env()
                fcfg = {"num-supernodes": num_supernodes or exp.data.num_clients, "client-resources-num-cpus": 1}
            else:
                connection, env = _connection(Path(tmp), superlink)
                fcfg = None
            for name in algorithms:
                runs = []
                for seed in exp.run.seeds:
                    app = write_app(Path(tmp) / f"app-{name}-{seed}", run_config_for(exp, name, seed, **settings))
                    show = _printer(name, seed) if progress else None
                    res = flwr_run(app, connection, federation_config=fcfg, env=env, timeout=timeout, on_line=show)
                    recs, s = parse_output(res.stdout)
                    if (failed := parse_failure(res.stdout)) is not None:
                        raise FlowerRunError(f"{name} seed {seed}: {failed}")
                    if s is None:
                        raise FlowerRunError(f"{name} seed {seed}: the Flower run ended without a summary "
                                             f"(exit code {res.returncode}); last output:\n{res.stdout[-3000:]}")
                    runs.append(s)
                    records += recs
                    write_jsonl(out / "metrics.jsonl", records)
                summary["algorithms"][name] = aggregate_seeds(runs)
                atomic_write_json(out / "summary.json", summary)
        finally:
            if fed is not None:
                fed.stop()
    return summary


def _run_state(out: Path, engine: str, superlink: str | None) -> dict:
    """``flower.json`` of the run directory: the run id (kept by a resumed run), engine and SuperLink."""
    path = out / "flower.json"
    if path.is_file():
        state = json.loads(path.read_text())
        if superlink:
            state["superlink"] = superlink
    else:
        state = {"run-id": uuid.uuid4().hex, "engine": engine, "superlink": superlink}
    atomic_write_json(path, state)
    return state


def resume(run_dir: str | Path, exp: Experiment, superlink: str | None = None, progress: bool = True) -> dict:
    """Continue an interrupted Flower run (``bouquet run --resume``) on its SuperLink (or ``superlink``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "flower.json").is_file():
        raise ConfigError(f"--resume {run_dir}: no flower.json; expected a directory of 'bouquet run --engine flower*'")
    return run(exp, run_dir, list(exp.algorithms), exp.run.engine, superlink=superlink, progress=progress)


def _printer(name: str, seed: int):
    def show(line: str) -> None:
        if RECORD in line:
            rec = json.loads(line.split(RECORD, 1)[1])
            score = rec.get("eval", {}).get("mean")
            print(f"{name} seed {seed} round {rec['round']}: train loss {rec['train_loss']:.4f}"
                  + (f", score {score:.4f}" if score is not None else ""), flush=True)

    return show


def _connection(tmp: Path, superlink: str | None) -> tuple[str | None, dict | None]:
    """An address gets a private FLWR_HOME with an insecure connection; a name uses the user's configuration."""
    if superlink and ":" in superlink:
        home = tmp / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        conn = {"address": superlink, "insecure": True}
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "bouquet", "bouquet": conn}}))
        return "bouquet", dict(os.environ, FLWR_HOME=str(home))
    return superlink, None
