"""``bouquet bench speed``: the FLoRAL MNIST workload on three engines, one after the other, each in its own process.

a. ``bouquet``: the local engine (vectorized: every client of a round in one vmapped step);
b. ``pfllib``: a plain PyTorch loop over clients, one module and ``torch.optim.SGD`` each;
c. ``flower``: the same bouquet algorithm under Flower's simulation runtime (skipped when absent).

Each way reports its seconds per training round (median after warm-up), its evaluation time, its
whole-run time and its peak RSS; the parent adds ratios to (a), the achieved GFLOP/s of (a) from
the analytic FLOP count, and the machine's measured GEMM rate at the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ...engine.simulator import Simulator
from ...engine.spec import RunSpec
from ..config import parse_experiment, resolved_dict
from .interleaved import interleaved
from .interleaved import table as interleaved_table
from .pfl_reference import Client, Server
from .workload import Workload, build_data, build_floral, cnn_workload, flops_per_example, matmul_gflops, peak_rss_mb

WAYS = ("bouquet", "pfllib", "flower")


def _summary(train: list[float], evals: list[float], rounds: int, warmup: int, wall: float) -> dict:
    steady = train[warmup:] or train
    return {"rounds": rounds, "round_s_median": statistics.median(steady), "round_s_min": min(steady),
            "eval_s_median": statistics.median(evals) if evals else None, "wall_s": wall,
            "per_round_with_eval_s": wall / rounds}


def run_bouquet(w: Workload, rounds: int, warmup: int, device: str = "cpu", vectorized: bool = True) -> dict:
    """(a) the local engine; training rounds and evaluations are timed apart."""
    data = build_data(w)
    alg = build_floral(w, data)
    spec = RunSpec(rounds=rounds, clients_per_round=w.clients_per_round, batch_size=w.batch_size,
                   local_epochs=w.local_epochs, eval_every=w.eval_every, vectorized=vectorized, device=device)
    sim = Simulator(alg, data, spec, seed=w.seed)
    state = sim.init_state()
    train, evals = [], []
    start, cpu = time.perf_counter(), time.process_time()
    acc = None
    for _ in range(rounds):
        t = time.perf_counter()
        state, _ = sim.run_round(state)
        _sync(device)
        train.append(time.perf_counter() - t)
        if state.round % w.eval_every == 0 or state.round == rounds:
            t = time.perf_counter()
            acc = sim.evaluate(state)["mean"]
            evals.append(time.perf_counter() - t)
    out = _summary(train, evals, rounds, warmup, time.perf_counter() - start)
    out["cpu_s"] = time.process_time() - cpu  # all threads' CPU time: less sensitive to a busy machine
    out["accuracy"] = acc
    return out


def run_pfllib(w: Workload, rounds: int, warmup: int) -> dict:
    """(b) the PFLlib-style reference loop."""
    data = build_data(w)
    alg = build_floral(w, data)
    clients = [Client(k, c, alg.model, w.lr, w.router_lr, w.batch_size, w.seed) for k, c in enumerate(data.clients)]
    server = Server(clients, alg.model, w.clients_per_round, w.seed)
    train, evals = [], []
    start, cpu = time.perf_counter(), time.process_time()
    acc = None
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        server.round()
        train.append(time.perf_counter() - t)
        if r % w.eval_every == 0 or r == rounds:
            t = time.perf_counter()
            acc = server.evaluate()
            evals.append(time.perf_counter() - t)
    out = _summary(train, evals, rounds, warmup, time.perf_counter() - start)
    out["cpu_s"] = time.process_time() - cpu
    out["accuracy"] = acc
    return out


def flower_experiment(w: Workload, rounds: int) -> dict:
    """The workload as an experiment config (raw TOML tables): what ``bouquet run --engine flower-sim`` gets."""
    spec = w.data_spec()
    data = {k: v for k, v in vars(spec).items() if v is not None and k not in ("path",)}
    return {"name": "bench_speed", "algorithms": ["floral"], "data": data,
            "model": {"name": "mlp", "hidden": w.hidden},
            "run": {"rounds": rounds, "clients_per_round": w.clients_per_round, "batch_size": w.batch_size,
                    "local_epochs": w.local_epochs, "eval_every": w.eval_every, "seeds": [w.seed]},
            "train": {"lr": w.lr},
            "algo": {"floral": {"rank": w.rho, "num_components": w.num_adaptors, "router_lr": w.router_lr}}}


def run_flower(w: Workload, rounds: int, warmup: int) -> dict:
    """(c) the same registered FLoRAL under Flower's simulation runtime (Ray), one simulated node per client.

    Seconds per round are the ServerApp's own round timer; the wall time includes Flower's start-up.
    """
    try:
        import tomli_w

        from ...flower.deploy import LocalFederation
        from ..flower_run import parse_output, write_app
    except ImportError as err:
        return {"skipped": f"Flower engine not available ({err})"}
    exp = parse_experiment(flower_experiment(w, rounds))
    run_config = {"experiment": tomli_w.dumps(resolved_dict(exp)), "algorithm": "floral", "seed": w.seed}
    with tempfile.TemporaryDirectory(prefix="bouquet-bench-") as tmp:
        start = time.perf_counter()
        with LocalFederation(tmp, 0, simulation=True) as fed:
            fcfg = {"num-supernodes": w.num_clients, "client-resources-num-cpus": 1}
            res = fed.run_app(write_app(Path(tmp) / "app", run_config), federation_config=fcfg, timeout=3600)
        wall = time.perf_counter() - start
    records, summary = parse_output(res.stdout)
    if summary is None or not records:
        return {"error": "the Flower run gave no summary: " + res.stdout[-300:].replace("\n", " ")}
    secs = [r["seconds"] for r in records]
    train = [s for r, s in zip(records, secs, strict=True) if "eval" not in r]
    evals = [s for r, s in zip(records, secs, strict=True) if "eval" in r]
    out = _summary(train, evals, rounds, warmup, wall)
    out["eval_s_median"] = None  # Flower's timer holds training + evaluation in one number
    out["accuracy"] = next((r["eval"]["mean"] for r in reversed(records) if "eval" in r), None)
    out["note"] = "seconds per round from the ServerApp's timer; peak RSS is the largest single process"
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(way: str, w: Workload, rounds: int, warmup: int, threads: int, device: str) -> dict:
    """Run one way in this process and return its numbers (peak RSS included)."""
    torch.set_num_threads(threads)
    if way == "bouquet":
        out = run_bouquet(w, rounds, warmup, device)
    elif way == "pfllib":
        out = run_pfllib(w, rounds, warmup)
    else:
        out = run_flower(w, rounds, warmup)
    out["peak_rss_mb"] = peak_rss_mb()
    if way == "flower":  # Flower's work happens in other processes (SuperLink, Ray actors)
        out["peak_rss_mb"] = max(out["peak_rss_mb"], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    out["threads"] = threads
    return out


def spawn(way: str, w: Workload, rounds: int, warmup: int, threads: int, device: str = "cpu") -> dict:
    """Run one way in a fresh interpreter (its own peak RSS); returns its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "bouquet.app.bench.speed", "--child", way, "--workload", w.to_json(),
               "--rounds", str(rounds), "--warmup", str(warmup), "--threads", str(threads),
               "--device", device, "--result", str(path)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        return json.loads(path.read_text())


def compare(w: Workload, rounds: dict[str, int], warmup: int, threads: int, ways: list[str],
            repeats: int = 1) -> dict:
    """Every way in turn (``repeats`` times, interleaved), then ratios, GFLOP/s and the GEMM rate."""
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    for _ in range(repeats):
        for way in ways:
            runs[way].append(spawn(way, w, rounds[way], warmup, threads))
    gemm = matmul_gflops(threads)
    flops = flops_per_example(build_floral(w, build_data(w)).model)
    train_flops = flops["train"] * w.clients_per_round * w.train_per_client * w.local_epochs
    result: dict = {"workload": json.loads(w.to_json()), "threads": threads, "gemm_gflops": gemm,
                    "train_gflop_per_round": train_flops / 1e9, "ways": {}}
    for way, rs in runs.items():
        good = [r for r in rs if "round_s_median" in r]
        if not good:
            result["ways"][way] = rs[0]
            continue
        med = statistics.median(r["round_s_median"] for r in good)
        result["ways"][way] = {**good[0], "round_s_median": med, "repeats": [r["round_s_median"] for r in good],
                               "peak_rss_mb": max(r["peak_rss_mb"] for r in good)}
    base = result["ways"].get("bouquet", {}).get("round_s_median")
    if base:
        gflops = train_flops / base / 1e9
        result["bouquet_gflops"] = gflops
        result["bouquet_fraction_of_gemm"] = gflops / gemm
        for r in result["ways"].values():
            if "round_s_median" in r:
                r["ratio_to_bouquet"] = r["round_s_median"] / base
    return result


def table(result: dict) -> str:
    """Markdown table of one comparison."""
    lines = ["| way | s/round (median) | ratio to (a) | eval s | whole run s (rounds) | CPU s/round | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for way, r in result["ways"].items():
        if "round_s_median" not in r:
            lines.append(f"| {way} | {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        ev = f"{r['eval_s_median']:.3f}" if r.get("eval_s_median") is not None else "-"
        cpu = f"{r['cpu_s'] / r['rounds']:.3f}" if "cpu_s" in r else "-"
        lines.append(f"| {way} | {r['round_s_median']:.4f} | {r.get('ratio_to_bouquet', 0):.1f}x | {ev} | "
                     f"{r['wall_s']:.1f} ({r['rounds']}) | {cpu} | {r['peak_rss_mb']:.0f} |")
    if "bouquet_gflops" in result:
        lines.append("")
        lines.append(f"(a) achieves {result['bouquet_gflops']:.1f} GFLOP/s on {result['train_gflop_per_round']:.2f} "
                     f"GFLOP per training round = {100 * result['bouquet_fraction_of_gemm']:.0f}% of the measured "
                     f"{result['gemm_gflops']:.1f} GFLOP/s GEMM ({result['threads']} threads).")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of bouquet,pfllib,flower")
    p.add_argument("--rounds", type=int, default=30, help="rounds of (b) and (c)")
    p.add_argument("--bouquet-rounds", type=int, default=500, help="rounds of (a) (the whole-run target is 500)")
    p.add_argument("--warmup", type=int, default=3, help="rounds left out of the median")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="repeat every way (interleaved); report the median")
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--json", help="also write the full result here")
    p.add_argument("--workload", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: FLoRAL MNIST MLP, three engines in turn; cnn: FLoRAL's CNN on Fashion-MNIST, bouquet "
                        "and the PFLlib-style loop interleaved round by round in one process (--rounds rounds)")


def main_args(args: argparse.Namespace) -> int:
    if args.workload == "cnn":
        result = interleaved(cnn_workload(args.clients), args.rounds, args.warmup, args.threads)
        print(interleaved_table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    w = Workload(num_clients=args.clients)
    ways = [x.strip() for x in args.ways.split(",") if x.strip()]
    rounds = {way: args.rounds for way in ways}
    rounds["bouquet"] = args.bouquet_rounds
    result = compare(w, rounds, args.warmup, args.threads, ways, args.repeats)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=WAYS, required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--result", required=True)
    a = p.parse_args(argv)
    out = child(a.child, Workload.from_json(a.workload), a.rounds, a.warmup, a.threads, a.device)
    Path(a.result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
