"""Command-line entry point: ``bouquet run CONFIG [--set key=value ...] [--out DIR] [--algorithms a,b]``.

``bouquet run --resume RUN_DIR`` continues an interrupted run from its checkpoints; ``bouquet report
RUN_DIR [RUN_DIR ...] [--out DIR]`` writes figures, report.md and report.html from run directories;
``bouquet compare RUN_DIR [RUN_DIR ...]`` groups runs by method and seed into one comparison report;
``bouquet sweep CONFIG --grid key=v1,v2`` runs a grid and compares it; ``bouquet config-reference`` prints
every config key with its type, default and meaning; ``bouquet partition CONFIG --nodes N --out DIR`` writes the
experiment's dataset as one data directory per Flower SuperNode (docs/flower.md, "Node-local data");
``bouquet export RUN_DIR --client K --out DIR`` writes one client's personalized model as a peft adapter.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO

from ..algorithms import ALGORITHMS
from ..checks import ConfigError
from ..data.federated import DataError
from ..data.node_dir import write_node_dirs
from ..engine.checkpoint import RunInterrupted
from ..files import WriteError, atomic_write_bytes
from .bench.cli import add_bench_parser, cmd_bench
from .compare import write_compare
from .config import load_experiment
from .config_reference import render_markdown
from .experiment import dataset_for_seed
from .export import export_node, export_run
from .report import results_table
from .report_html import write_report
from .rundir import parse_allowed
from .runner import resume_experiment, run_experiment
from .sweep import sweep


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bouquet", description="Personalized federated fine-tuning with low-rank "
                                "adaptors: FLoRAL, Potara and their baselines.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config")
    run.add_argument("config", nargs="?", help="experiment TOML file (see configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set run.rounds=10 (repeatable)")
    run.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    run.add_argument("--algorithms", help="comma-separated algorithms to run (default: the config's list)")
    run.add_argument("--seeds", help="comma-separated seeds (default: run.seeds)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR from its "
                     "latest valid checkpoint (its config.toml is used; no CONFIG, --set, --algorithms, --seeds, "
                     "--out or --engine; --superlink: another SuperLink for a Flower run)")
    run.add_argument("--allow-config-change", metavar="KEYS", help="with --resume: accept these edited keys of "
                     "config.toml (comma list of run.rounds, run.eval_every, run.checkpoint_every, run.threads)")
    run.add_argument("--engine", choices=["local", "flower-sim", "flower"],
                     help="local (default: run.engine), flower-sim (Flower simulation runtime) or flower "
                     "(a running SuperLink, see --superlink); docs/flower.md")
    run.add_argument("--superlink", metavar="ADDRESS", help="with --engine flower: host:port of an insecure "
                     "SuperLink, or the name of a connection in $FLWR_HOME/config.toml (TLS)")
    sub.add_parser("algorithms", help="list the available algorithms")
    rep = sub.add_parser("report", help="figures, report.md and report.html from run directories")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by 'bouquet run'")
    rep.add_argument("--out", help="report directory (default: RUN_DIR/report of the first RUN_DIR)")
    cmp = sub.add_parser("compare", help="one comparison report over runs, grouped by method and seed")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or a directory of them "
                     "(a sweep's --out)")
    cmp.add_argument("--out", help="report directory (default: RUN_DIR/compare of the first RUN_DIR)")
    sw = sub.add_parser("sweep", help="run a grid of configs x algorithms x seeds, then compare them")
    sw.add_argument("config", help="experiment TOML file (see configs/)")
    sw.add_argument("--algorithms", help="comma-separated algorithms (default: the config's list)")
    sw.add_argument("--seeds", help="comma-separated seeds (default: run.seeds)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value at every grid point (repeatable)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="sweep a config key over comma-separated values (repeatable: the grid is their product)")
    sw.add_argument("--out", help="sweep directory: one run directory per grid point and compare/ "
                    "(default: runs/<name>-sweep-<time>)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    exp = sub.add_parser("export", help="one client's personalized model as a peft adapter directory")
    exp.add_argument("run_dir", metavar="RUN_DIR", nargs="?",
                     help="a directory written by 'bouquet run' (Hugging Face model)")
    exp.add_argument("--node-state", metavar="DIR", help="instead of RUN_DIR: a SuperNode's state directory "
                     "(its state-dir node config); the model is rebuilt on the node, with --config")
    exp.add_argument("--config", metavar="EXP", help="with --node-state: the experiment TOML of the run")
    exp.add_argument("--data-dir", metavar="DIR", help="with --node-state: the node's data directory, if it has one")
    exp.add_argument("--run", metavar="NAME", help="with --node-state: which run of the state directory")
    exp.add_argument("--client", type=int, required=True, help="client id (0..K-1)")
    exp.add_argument("--algorithm", help="which of the run's algorithms (needed when it ran several)")
    exp.add_argument("--seed", type=int, help="which of the run's seeds (needed when it ran several)")
    exp.add_argument("--out", required=True, help="output directory (PeftModel.from_pretrained(base, OUT) loads it)")
    ref = sub.add_parser("config-reference", help="every config key with its type, default and meaning (Markdown)")
    ref.add_argument("--out", metavar="FILE", help="write it to FILE (e.g. docs/config.md) instead of printing it")
    part = sub.add_parser("partition", help="write the experiment's dataset as per-node data directories "
                          "(SuperNode --node-config data-dir=...)")
    part.add_argument("config", help="experiment TOML file (see configs/)")
    part.add_argument("--nodes", type=int, required=True, help="number of node directories (client k on node k mod N)")
    part.add_argument("--out", required=True, help="directory to write node-0 ... node-<N-1> into")
    part.add_argument("--seed", type=int, help="run seed whose data draw to write (default: the first of run.seeds)")
    part.add_argument("--format", choices=["npz", "pt"], default="npz", help="client file format (default npz)")
    part.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value (repeatable)")
    # the optional Flower runtime is imported only when this runs; its own parser reads the arguments
    sub.add_parser("node-worker", add_help=False, help="run a SuperNode's ClientApp tasks in one long-lived process "
                   "(flower-supernode --isolation process; 'bouquet node-worker --help', docs/flower.md)")
    sub.add_parser("supernode", add_help=False, help="Flower's flower-supernode with its fixed waits as options "
                   "(--idle-wait, --reply-wait, --object-retry; 'bouquet supernode --help', docs/flower.md)")
    sub.add_parser("superlink", add_help=False, help="Flower's flower-superlink with its pass-through middleware "
                   "skipped by path (docs/flower.md)")
    add_bench_parser(sub)
    return p


def _cmd_partition(args: argparse.Namespace) -> int:
    exp = load_experiment(args.config, args.overrides)
    seed = exp.run.seeds[0] if args.seed is None else args.seed
    dirs = write_node_dirs(dataset_for_seed(exp, seed), args.out, args.nodes, args.format)
    print(f"{exp.data.name} (seed {seed}): {exp.data.num_clients} clients in {len(dirs)} node directories under "
          f"{args.out}; start SuperNode i with --node-config \"data-dir={Path(args.out).resolve()}/node-i\"")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        given = [o for o, v in (("CONFIG", args.config), ("--set", args.overrides), ("--algorithms", args.algorithms),
                                ("--seeds", args.seeds), ("--out", args.out), ("--engine", args.engine)) if v]
        if given:
            raise ConfigError(f"--resume: continues the run as configured in {args.resume}/config.toml; "
                              f"drop {', '.join(given)}")
        allowed = parse_allowed(args.allow_config_change)
        summary = resume_experiment(args.resume, progress=not args.no_progress, allow_changes=allowed,
                                    superlink=args.superlink)
        print(results_table(summary))
        print(f"run directory: {args.resume}")
        return 0
    if args.allow_config_change:
        raise ConfigError("--allow-config-change: only with --resume RUN_DIR (a new run has nothing to change)")
    if not args.config:
        raise ConfigError("CONFIG: expected an experiment TOML file (or --resume RUN_DIR)")
    overrides = list(args.overrides)
    if args.seeds:
        overrides.append(f"run.seeds=[{args.seeds}]")
    if args.engine:
        overrides.append(f"run.engine='{args.engine}'")
    exp = load_experiment(args.config, overrides)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()] if args.algorithms else None
    out = Path(args.out) if args.out else Path("runs") / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_experiment(exp, out, algorithms, progress=not args.no_progress, superlink=args.superlink)
    print(f"\n{exp.name}: {exp.data.name}, {exp.data.num_clients} clients, {exp.run.rounds} rounds")
    print(results_table(summary))
    print(f"run directory: {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    path = write_report(args.run_dirs, args.out)
    print(f"report: {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    path = write_compare(args.run_dirs, args.out)
    print(f"report: {path}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()] if args.algorithms else None
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if args.out:
        out = Path(args.out)
    else:
        name = load_experiment(args.config, args.overrides).name
        out = Path("runs") / f"{name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    path = sweep(args.config, out, algorithms, seeds, args.overrides, args.grid, progress=not args.no_progress)
    print(f"run directories: {out}")
    print(f"report: {path}")
    return 0


def _cmd_config_reference(args: argparse.Namespace) -> int:
    text = render_markdown()
    if args.out:
        atomic_write_bytes(args.out, text.encode())
        print(f"config reference: {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if (args.run_dir is None) == (args.node_state is None):
        raise ConfigError("export: give RUN_DIR or --node-state DIR (one of them)")
    if args.node_state is not None:
        if args.config is None:
            raise ConfigError("--config: --node-state needs the run's experiment TOML")
        out = export_node(args.node_state, args.config, args.client, args.out, algorithm=args.algorithm,
                          seed=args.seed, data_dir=args.data_dir, run=args.run)
    else:
        out = export_run(args.run_dir, args.client, args.out, algorithm=args.algorithm, seed=args.seed)
    print(f"peft adapter: {out}")
    return 0


def _cmd_algorithms(args: argparse.Namespace) -> int:
    for name, spec in sorted(ALGORITHMS.items()):
        print(f"{name:20s} {spec.summary}")
    return 0


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """The CLI's ``warnings.showwarning``: one line ``bouquet: warning: ...`` (foreign ones name category, place)."""
    text = " ".join(str(message).split())
    if not getattr(category, "__module__", "").startswith("bouquet"):
        text = f"{category.__name__}: {text} ({filename}:{lineno})"
    print(f"bouquet: warning: {text}", file=file or sys.stderr, flush=True)


def _cmd_node_worker(argv: list[str]) -> int:
    from ..flower.node_worker import main as worker_main  # needs the optional flwr package

    return worker_main(argv)


def _cmd_supernode(argv: list[str]) -> int:
    from ..flower.supernode import main as supernode_main  # needs the optional flwr package

    return supernode_main(argv)


def _cmd_superlink(argv: list[str]) -> int:
    from ..flower.superlink import main as superlink_main  # needs the optional flwr package

    return superlink_main(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run; configuration, data and file errors print one line and exit with status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["node-worker"]:  # a long-lived process with Flower's options (bouquet.flower.node_worker)
        return _cmd_node_worker(argv[1:])
    if argv[:1] == ["supernode"]:  # Flower's SuperNode with its waits as options (bouquet.flower.supernode)
        return _cmd_supernode(argv[1:])
    if argv[:1] == ["superlink"]:  # Flower's SuperLink, pass-through middleware skipped (bouquet.flower.superlink)
        return _cmd_superlink(argv[1:])
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "partition":
            return _cmd_partition(args)
        if args.command == "config-reference":
            return _cmd_config_reference(args)
        if args.command == "export":
            return _cmd_export(args)
        return _cmd_algorithms(args)
    except (ConfigError, DataError, WriteError) as err:  # WriteError: a report or reference file not written
        print(f"bouquet: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:  # Ctrl-C (130) or SIGTERM (143), after a checkpoint
        print(f"bouquet: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # a second signal, or Ctrl-C outside a run
        code = getattr(err, "exit_code", 130)
        print(f"bouquet: {'terminated' if code == 143 else 'interrupted'}", file=sys.stderr)
        return code
    except RuntimeError as err:  # a run that failed outside bouquet (e.g. FlowerRunError): one line, status 1
        if not getattr(err, "user_facing", False):
            raise
        print(f"bouquet: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
