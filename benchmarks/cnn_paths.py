"""CNN local-training paths on CPU: vmap over clients vs the client loop, and folded vs paired ConvLoRA convs.

Workload: `configs/floral/fashion_mnist_rotate_cnn.toml` (FLoRAL's CIFAR CNN on Fashion-MNIST, 300 clients,
30 per round, batch 32, 7 local steps). For each algorithm, one round of local training plus aggregation
(`Simulator.run_round`) and one evaluation of all 300 clients, per path, interleaved, median of repeats.
"paired" runs each mixture conv layer as base conv + conv to C*r channels + conv back (the form before
the kernel was folded), kept here only as the baseline.

    .venv/bin/python benchmarks/cnn_paths.py [--repeats 3] [--threads 2] [--algorithms fedavg,floral,ensemble]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

from bouquet.adapters.functional import mixture_conv2d_delta
from bouquet.adapters.layers import MixtureConv2d
from bouquet.adapters.mixture import current_pi
from bouquet.app.config import load_experiment, with_run
from bouquet.app.runner import simulator
from bouquet.data import build_dataset

CONFIG = "configs/floral/fashion_mnist_rotate_cnn.toml"


def _paired_forward(self: MixtureConv2d, x: torch.Tensor) -> torch.Tensor:
    pi = current_pi(self.context, self.num_adaptors, x)
    delta = mixture_conv2d_delta(x, self.lora_A, self.lora_B, pi, self.lora_bias, self.split.opts_a,
                                 self.split.opts_b)
    return self.base(x) + self.alpha * delta


@contextmanager
def conv_form(form: str):
    """Run MixtureConv2d folded (the library's forward) or paired (the conv-pair baseline)."""
    folded = MixtureConv2d.forward
    if form == "paired":
        MixtureConv2d.forward = _paired_forward
    try:
        yield
    finally:
        MixtureConv2d.forward = folded


def time_path(exp, data, name: str, vectorized: bool, form: str) -> tuple[float, float, float]:
    """(seconds of one round, seconds of one evaluation, mean accuracy) after a warm-up round."""
    sim, _ = simulator(with_run(exp, vectorized=vectorized), data, name, 0)
    with conv_form(form):
        state, _ = sim.run_round(sim.init_state())
        t = time.perf_counter()
        state, _ = sim.run_round(state)
        t_round = time.perf_counter() - t
        t = time.perf_counter()
        acc = sim.evaluate(state)["mean"]
        t_eval = time.perf_counter() - t
    return t_round, t_eval, acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--algorithms", default="fedavg,floral,ensemble")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exp = load_experiment(CONFIG)
    data = build_dataset(exp.data)
    print(f"{CONFIG}: 30 clients per round, threads={args.threads}, median of {args.repeats}")
    print("| algorithm | path | round (s) | evaluation (s) | round vs vmap | evaluation vs vmap | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name in args.algorithms.split(","):
        paths = [("vmap", True, "folded"), ("client loop", False, "folded")]
        if name.startswith("floral"):
            paths += [("vmap, paired convs", True, "paired"), ("client loop, paired convs", False, "paired")]
        times: dict[str, list[tuple[float, float, float]]] = {p[0]: [] for p in paths}
        for _ in range(args.repeats):
            for label, vec, form in paths:
                times[label].append(time_path(exp, data, name, vec, form))
        base_r = statistics.median(t[0] for t in times["vmap"])
        base_e = statistics.median(t[1] for t in times["vmap"])
        for label, _, _ in paths:
            r = statistics.median(t[0] for t in times[label])
            e = statistics.median(t[1] for t in times[label])
            print(f"| {name} | {label} | {r:.2f} | {e:.2f} | {base_r / r:.2f}x | {base_e / e:.2f}x | "
                  f"{100 * times[label][-1][2]:.2f} |")


if __name__ == "__main__":
    main()
