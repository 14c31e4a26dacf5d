"""bouquet's local engine and the PFLlib-style loop in one process, round by round (``bench speed --workload cnn``).

On a shared machine the load changes from minute to minute; alternating the two ways round by round in
the same process (who goes first alternates too) exposes both to the same contention, and the median of
the per-round ratios is what is reported, on wall-clock and on CPU time. Both start from the same seeded
model; the accuracies after the last round are reported beside the times.
"""

from __future__ import annotations

import statistics
import time

import torch

from ...engine.simulator import Simulator
from ...engine.spec import RunSpec
from ...models import build_model
from .pfl_reference import Client, Server
from .workload import Workload, build_data, build_floral, conv_flops_per_example, matmul_gflops, peak_rss_mb

WAYS = ("bouquet", "pfllib")


def _median_after(xs: list[float], warmup: int) -> float:
    return statistics.median(xs[warmup:] or xs)


def interleaved(w: Workload, rounds: int, warmup: int, threads: int, device: str = "cpu") -> dict:
    """Train ``rounds`` rounds both ways, alternating; evaluate both every ``w.eval_every`` rounds."""
    torch.set_num_threads(threads)
    data = build_data(w)
    spec = RunSpec(rounds=rounds, clients_per_round=w.clients_per_round, batch_size=w.batch_size,
                   local_epochs=w.local_epochs, eval_every=w.eval_every, device=device)
    sim = Simulator(build_floral(w, data), data, spec, seed=w.seed)
    state = sim.init_state()
    model = build_floral(w, data).model
    clients = [Client(k, c, model, w.lr, w.router_lr, w.batch_size, w.seed) for k, c in enumerate(data.clients)]
    server = Server(clients, model, w.clients_per_round, w.seed)
    wall: dict[str, list[float]] = {k: [] for k in WAYS}
    cpu: dict[str, list[float]] = {k: [] for k in WAYS}
    evals: dict[str, list[float]] = {k: [] for k in WAYS}
    acc: dict[str, float] = {}

    def bouquet_round() -> None:
        nonlocal state
        state, _ = sim.run_round(state)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def bouquet_eval() -> float:
        return sim.evaluate(state)["mean"]

    work = {"bouquet": (bouquet_round, bouquet_eval), "pfllib": (server.round, server.evaluate)}
    for r in range(1, rounds + 1):
        for way in (WAYS if r % 2 else WAYS[::-1]):
            step, _ = work[way]
            t, c = time.perf_counter(), time.process_time()
            step()
            wall[way].append(time.perf_counter() - t)
            cpu[way].append(time.process_time() - c)
        if r % w.eval_every == 0 or r == rounds:
            for way in WAYS:
                t = time.perf_counter()
                acc[way] = float(work[way][1]())
                evals[way].append(time.perf_counter() - t)
    flops = conv_flops_per_example(build_model(w.model, data.input_shape, data.num_outputs), data.input_shape)
    rows = statistics.mean(int(c.x_train.shape[0]) for c in data.clients)  # a sampled client's rows, on average
    train_flops = flops["train"] * rows * w.clients_per_round * w.local_epochs
    gemm = matmul_gflops(threads)
    out: dict = {"workload": w.__dict__, "threads": threads, "rounds": rounds, "warmup": warmup,
                 "training_path": sim.training_path, "peak_rss_mb": peak_rss_mb(), "gemm_gflops": gemm,
                 "train_gflop_per_round": train_flops / 1e9, "ways": {}}
    for way in WAYS:
        out["ways"][way] = {"round_s_median": _median_after(wall[way], warmup),
                            "cpu_s_median": _median_after(cpu[way], warmup),
                            "eval_s_median": statistics.median(evals[way]), "accuracy": acc[way],
                            "round_s": wall[way], "cpu_s": cpu[way]}
    ratios = [p / b for p, b in zip(wall["pfllib"], wall["bouquet"], strict=True)][warmup:]
    cpu_ratios = [p / b for p, b in zip(cpu["pfllib"], cpu["bouquet"], strict=True)][warmup:]
    out["ratio_wall"] = statistics.median(ratios)
    out["ratio_cpu"] = statistics.median(cpu_ratios)
    out["bouquet_gflops"] = train_flops / out["ways"]["bouquet"]["round_s_median"] / 1e9
    return out


def table(result: dict) -> str:
    """Markdown table of one interleaved comparison."""
    lines = ["| way | s/round (median) | CPU s/round (median) | eval of all clients, s | last accuracy |",
             "|---|---|---|---|---|"]
    for way, r in result["ways"].items():
        lines.append(f"| {way} | {r['round_s_median']:.3f} | {r['cpu_s_median']:.3f} | {r['eval_s_median']:.2f} | "
                     f"{r['accuracy']:.4f} |")
    lines += ["", f"pfllib / bouquet, median of the per-round ratios: wall {result['ratio_wall']:.2f}x, "
              f"CPU {result['ratio_cpu']:.2f}x ({result['rounds']} rounds, first {result['warmup']} left out, "
              f"{result['threads']} threads, bouquet path: {result['training_path']}); bouquet at "
              f"{result['bouquet_gflops']:.1f} GFLOP/s on {result['train_gflop_per_round']:.1f} GFLOP per round, "
              f"GEMM {result['gemm_gflops']:.1f} GFLOP/s; peak RSS {result['peak_rss_mb']:.0f} MiB."]
    return "\n".join(lines)
