"""Every measured way to train FLoRAL's CNN clients, against the PFLlib-style loop, interleaved in one process.

Workload: `bouquet.app.bench.workload.cnn_workload` (= `configs/floral/fashion_mnist_rotate_cnn.toml`: FLoRAL's
CIFAR CNN on Fashion-MNIST Rotate with C = 4 ConvLoRA mixtures at 1%, 300 clients, 30 per round, batch 32, one
epoch = 7 steps). Each repeat runs one round of every way in turn (who goes first rotates), so a busy machine
slows them alike; reported: the median wall and CPU seconds per round and the median ratio to the loop. Ways:
the PFLlib-style loop, bouquet's client loop (train_sequential, the old CPU default), vmap + autograd (grouped
convs), the batched conv kernels with their defaults, and the kernels with one option changed at a time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cnn_paths.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bouquet.app.bench.pfl_reference import Client, Server
from bouquet.app.bench.workload import build_data, build_floral, cnn_workload
from bouquet.engine.conv_kernels import ConvOptions, conv_trainer
from bouquet.engine.simulator import Simulator
from bouquet.engine.spec import RunSpec

CANDIDATES = {
    "kernels (defaults: im2col first conv, per-client channels-last convs, pool before ReLU, foreach, chunk 5, "
    "one chunk per intra-op thread at once)": ConvOptions(),
    "kernels, chunks one after another on all intra-op threads": ConvOptions(workers=1),
    "kernels, first conv by oneDNN": ConvOptions(first="conv"),
    "kernels, later convs grouped over clients": ConvOptions(convs="grouped"),
    "kernels, later convs by im2col + bmm": ConvOptions(convs="im2col"),
    "kernels, NCHW layout": ConvOptions(channels_last=False),
    "kernels, ReLU before pool": ConvOptions(pool_first=False),
    "kernels, one update op per tensor": ConvOptions(foreach=False),
    "kernels, chunk 1": ConvOptions(chunk=1),
    "kernels, chunk 2": ConvOptions(chunk=2),
    "kernels, chunk 3": ConvOptions(chunk=3),
    "kernels, chunk 6": ConvOptions(chunk=6),
    "kernels, chunk 10": ConvOptions(chunk=10),
    "kernels, chunk 15": ConvOptions(chunk=15),
    "kernels, all 30 clients at once": ConvOptions(chunk=0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-vmap", action="store_true", help="leave out vmap + autograd (the slowest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w = cnn_workload()
    data = build_data(w)
    spec = RunSpec(rounds=100, clients_per_round=w.clients_per_round, batch_size=w.batch_size)
    ways: dict = {}
    model = build_floral(w, data).model
    server = Server([Client(k, c, model, w.lr, w.router_lr, w.batch_size, w.seed) for k, c in enumerate(data.clients)],
                    model, w.clients_per_round, w.seed)
    ways["PFLlib-style loop"] = server.round
    seq = Simulator(build_floral(w, data), data, RunSpec(**{**spec.__dict__, "vectorized": False,
                                                            "hand_batched": False}), seed=w.seed)
    paths = {"bouquet client loop (train_sequential)": seq}
    if not args.skip_vmap:
        paths["vmap + autograd (grouped convs)"] = Simulator(
            build_floral(w, data), data, RunSpec(**{**spec.__dict__, "vectorized": True, "hand_batched": False}),
            seed=w.seed)
    for label, options in CANDIDATES.items():
        sim = Simulator(build_floral(w, data), data, spec, seed=w.seed)
        sim.trainer = conv_trainer(sim.alg.model, sim.alg.objective, sim.alg.local_update, sim.alg.loss_spec, options)
        paths[label] = sim
    for label, sim in paths.items():
        box = {"state": sim.init_state()}

        def step(sim=sim, box=box):
            box["state"], _ = sim.run_round(box["state"])

        ways[label] = step
    wall: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for rep in range(args.repeats + 1):  # the first pass is a warm-up
        for label in names[rep % len(names):] + names[:rep % len(names)]:
            t, c = time.perf_counter(), time.process_time()
            ways[label]()
            if rep:
                wall[label].append(time.perf_counter() - t)
                cpu[label].append(time.process_time() - c)
        print(f"repeat {rep} done", flush=True)
    base_w, base_c = statistics.median(wall[names[0]]), statistics.median(cpu[names[0]])
    print(f"threads={args.threads}, median of {args.repeats} rounds per way")
    print("| way | s/round (wall) | CPU s/round | loop / this (wall) | loop / this (CPU) |")
    print("|---|---|---|---|---|")
    for label in names:
        mw, mc = statistics.median(wall[label]), statistics.median(cpu[label])
        print(f"| {label} | {mw:.2f} | {mc:.2f} | {base_w / mw:.2f}x | {base_c / mc:.2f}x |")


if __name__ == "__main__":
    main()
