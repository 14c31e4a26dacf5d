"""Where a deployment round goes: the SuperLink's requests per round by route and each process's CPU per round.

Runs bouquet's default deployment (FedAvg on synthetic_linear, 10 clients every round, evaluation folded into the
next round's train messages, 3 SuperNodes with their own data directories and the node worker in each SuperNode's
process, its Runtime API in-process: the fastest row of ``flower_overhead.py``) for ``--short`` and then ``--long``
rounds. Per-round figures are differences between the two runs divided by the difference in rounds, so process
start-up, the first message's job build and the run's start and end cancel out. Requests are counted in the
SuperLink by ``benchmarks/flower_requests/sitecustomize.py`` (a wrapper of Flower's request middleware); CPU
seconds are each process's user + system time from ``/proc``, sampled every 0.1 s while it lives. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flower_load.py --short 8 --long 24
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import tomli_w
from flower_overhead import experiment

from bouquet.app.config import resolved_dict
from bouquet.app.experiment import data_for_seed
from bouquet.app.flower_run import parse_output, write_app
from bouquet.data import build_dataset
from bouquet.data.node_dir import write_node_dirs
from bouquet.flower.deploy import LocalFederation, process_tree

COUNTER = Path(__file__).resolve().parent / "flower_requests"
ROLES = (("flwr-serverapp", "ServerApp"), ("flower-superexec", "SuperExec"), ("flower-superlink", "SuperLink"),
         ("bouquet superlink", "SuperLink"), ("bouquet supernode", "SuperNode"))


def _role(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return next((name for key, name in ROLES if key in cmd), None)


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(rounds: int) -> dict:
    """Seconds per round, requests by route and CPU seconds by role for one deployment run of ``rounds``."""
    exp = experiment(rounds)
    run_config = {"experiment": tomli_w.dumps(resolved_dict(exp)), "algorithm": "fedavg", "seed": 0,
                  "packed": True, "fold-evaluation": True}
    cpu: dict[int, tuple[str, float]] = {}
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bouquet-load-") as tmp:
        counts = Path(tmp) / "requests.json"
        os.environ["PYTHONPATH"] = os.pathsep.join([str(COUNTER), os.environ.get("PYTHONPATH", "")])
        os.environ["BOUQUET_REQUEST_COUNTS"] = str(counts)
        try:
            dirs = write_node_dirs(build_dataset(data_for_seed(exp, 0)), Path(tmp) / "nodes", 3)
            with LocalFederation(tmp, 3, node_configs=[{"data-dir": str(d)} for d in dirs], workers=True,
                                 worker_in_node=True) as fed:
                done = threading.Event()

                def sample() -> None:
                    while not done.is_set():
                        for proc in [fed.superlink, *fed.supernodes]:
                            for pid in process_tree(proc.pid):
                                role, used = _role(pid), _cpu_seconds(pid)
                                if role is not None and used is not None:
                                    cpu[pid] = (role, used)
                        time.sleep(0.1)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                res = fed.run_app(write_app(Path(tmp) / "app", run_config), timeout=1800)
                time.sleep(1.0)  # the counter writes twice a second
                done.set()
                sampler.join()
                requests = json.loads(counts.read_text())
        finally:
            os.environ.clear()
            os.environ.update(saved)
    records, summary = parse_output(res.stdout)
    if summary is None:
        raise RuntimeError(res.stdout[-3000:])
    by_role: dict[str, float] = {}
    for role, used in cpu.values():
        by_role[role] = by_role.get(role, 0.0) + used
    return {"seconds": [r["seconds"] for r in records], "requests": requests, "cpu": by_role}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--short", type=int, default=8)
    p.add_argument("--long", type=int, default=24)
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args()
    short, long = one_run(args.short), one_run(args.long)
    n = args.long - args.short
    for name, run in (("short", short), ("long", long)):
        secs = run["seconds"]
        print(f"{name} run ({len(secs)} rounds): median s/round (rounds 2 to the last but one) "
              f"{statistics.median(secs[1:-1]):.3f}, wall of the rounds {sum(secs):.2f} s")
    per_round = {"seconds": (sum(long["seconds"]) - sum(short["seconds"])) / n}
    routes = sorted(set(short["requests"]) | set(long["requests"]))
    reqs = {r: (long["requests"].get(r, 0) - short["requests"].get(r, 0)) / n for r in routes}
    per_round["requests"] = dict(sorted(reqs.items(), key=lambda kv: -kv[1]))
    per_round["cpu"] = {role: (long["cpu"].get(role, 0.0) - short["cpu"].get(role, 0.0)) / n
                        for role in sorted(set(short["cpu"]) | set(long["cpu"]))}
    print(f"per round (difference of the two runs / {n} rounds): {per_round['seconds']:.3f} s")
    total = sum(reqs.values())
    print(f"SuperLink requests per round: {total:.1f}")
    for route, count in per_round["requests"].items():
        if abs(count) >= 0.05:
            print(f"  {count:6.2f}  {route}")
    print("CPU seconds per round, by process role (all processes of that role together):")
    for role, used in per_round["cpu"].items():
        print(f"  {used:6.3f}  {role}")
    print(f"  {sum(per_round['cpu'].values()):6.3f}  all")
    if total:
        print(f"SuperLink CPU per request: {1000 * per_round['cpu'].get('SuperLink', 0.0) / total:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"short": short, "long": long, "per_round": per_round}, indent=2))


if __name__ == "__main__":
    main()
