"""``bouquet sweep``: a grid of configs x algorithms x seeds, one run directory per grid point, then the comparison.

Each grid point (one value of every ``--grid key=v1,v2``) is run by the public ``run_experiment`` into
``<out>/<key=value,...>`` (``<out>/base`` without a grid). An algorithm whose method (``compare.method_key``)
was already run at an earlier grid point (a baseline that does not read the swept key) is not run again.
One progress bar counts finished (grid point, algorithm, seed) runs: ``run_experiment`` has no per-round
hook, so a thread follows the ``metrics.jsonl`` it rewrites after every finished seed.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..algorithms import ALGORITHMS
from ..checks import ConfigError
from .compare import method_key, write_compare
from .config import Experiment, load_experiment, parse_override, require_distinct, resolved_dict
from .runner import run_experiment


@dataclass
class Point:
    """One grid point: its overrides, run directory, experiment and the algorithms run there."""

    overrides: list[str]
    out: Path
    exp: Experiment
    algorithms: list[str]


def parse_grid(items: list[str], fixed: list[str]) -> list[tuple[str, list[str]]]:
    """``key=v1,v2`` items -> [(key, [v1, v2])]; a repeated key, or one also given with --set, is a ConfigError."""
    fixed_keys = {".".join(parse_override(t)[0]) for t in fixed}
    grid: list[tuple[str, list[str]]] = []
    for text in items:
        if "=" not in text:
            raise ConfigError(f"--grid {text!r}: expected key=value1,value2,...")
        key, values = (part.strip() for part in text.split("=", 1))
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not key or not vals:
            raise ConfigError(f"--grid {text!r}: expected key=value1,value2,...")
        if key in fixed_keys:
            raise ConfigError(f"--grid {key}: also given with --set; give it in one place")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {key}: given twice; list every value in one --grid {key}=v1,v2")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--grid {key}: a value is repeated in {vals}")
        grid.append((key, vals))
    return grid


def _dir_name(overrides: list[str]) -> str:
    text = ",".join(overrides) or "base"
    return "".join(ch if ch.isalnum() or ch in "._=,+-" else "_" for ch in text)[:150]


def plan(config: str | Path, out: Path, algorithms: list[str] | None, seeds: list[int] | None,
         overrides: list[str], grid: list[tuple[str, list[str]]]) -> list[Point]:
    """Every grid point, validated before anything runs, with the algorithms not already run at an earlier point."""
    for a in algorithms or []:
        if a not in ALGORITHMS:
            raise ConfigError(f"--algorithms: unknown algorithm {a!r}; expected one of {sorted(ALGORITHMS)}")
    require_distinct(list(algorithms or []), "--algorithms")
    base = list(overrides) + ([f"run.seeds=[{', '.join(map(str, seeds))}]"] if seeds else [])
    points: list[Point] = []
    done: dict[str, Path] = {}
    names: set[str] = set()
    for values in itertools.product(*(vals for _, vals in grid)):
        point = [f"{k}={v}" for (k, _), v in zip(grid, values, strict=True)]
        exp = load_experiment(config, base + point)
        algs = list(algorithms or exp.algorithms)
        name = _dir_name(point)
        while name in names:
            name += "_"
        names.add(name)
        config_dict = resolved_dict(replace(exp, algorithms=algs))  # as run_experiment writes it
        todo = []
        for a in algs:
            key = method_key(config_dict, a)
            if key in done:
                print(f"bouquet: note: sweep: {a} at {','.join(point)} is the same method as in {done[key]} "
                      f"(it does not read the swept keys); not run again", file=sys.stderr, flush=True)
                continue
            done[key] = out / name
            todo.append(a)
        if todo:
            points.append(Point(point, out / name, exp, todo))
    return points


class _Follower:
    """A thread that reports finished (algorithm, seed) runs of one run directory from its metrics.jsonl, each new
    count once: a read that catches the file mid-write (fewer lines) reports nothing."""

    def __init__(self, path: Path, rounds: int, report: Callable[[int], None]):
        self.path, self.rounds, self.report = path, rounds, report
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.seen: tuple[float, int] | None = None
        self.count = 0

    def _finished(self) -> int:
        try:
            stat = self.path.stat()
            if (stat.st_mtime, stat.st_size) == self.seen:
                return -1
            self.seen = (stat.st_mtime, stat.st_size)
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return -1
        done = set()
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("round", 0) >= self.rounds:
                done.add((rec.get("algorithm"), rec.get("seed")))
        return len(done)

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            n = self._finished()
            if n > self.count:
                self.count = n
                self.report(n)

    def __enter__(self) -> _Follower:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class _Bar:
    """The one progress bar of a sweep (tqdm), over every (grid point, algorithm, seed) run."""

    def __init__(self, total: int, show: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True, disable=not show)
        self.lock = threading.Lock()
        self.base = 0

    def at(self, done_here: int) -> None:
        """Show ``done_here`` finished runs of the current grid point (after the earlier points' runs)."""
        with self.lock:
            target = min(self.base + done_here, self.bar.total)
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def sweep(config: str | Path, out: str | Path, algorithms: list[str] | None = None, seeds: list[int] | None = None,
          overrides: list[str] | None = None, grid: list[str] | None = None, progress: bool = True) -> Path:
    """Run every (grid point, algorithm, seed) with run_experiment, then the comparison; return report.html's path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    points = plan(config, out, algorithms, seeds, list(overrides or []), parse_grid(list(grid or []),
                                                                                  list(overrides or [])))
    total = sum(len(p.algorithms) * len(p.exp.run.seeds) for p in points)
    bar = _Bar(total, progress)
    try:
        for p in points:
            bar.bar.set_postfix_str(",".join(p.overrides) or "base", refresh=False)
            with _Follower(p.out / "metrics.jsonl", p.exp.run.rounds, bar.at):
                run_experiment(p.exp, p.out, p.algorithms, progress=False)
            bar.base += len(p.algorithms) * len(p.exp.run.seeds)
            bar.at(0)
    finally:
        bar.close()
    return write_compare([p.out for p in points], out / "compare")
