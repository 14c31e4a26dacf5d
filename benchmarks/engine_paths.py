"""Vectorized vs sequential local training: 30 clients of the MNIST MLP (784-200-10), one round's steps.

Both paths train the same clients on the same pre-built batches (mnist5k, 200 rows per client,
batch 32, one epoch = 7 steps); the ratio is measured in one process, interleaved, median of repeats.

    .venv/bin/python benchmarks/engine_paths.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import vmap

from bouquet.algorithms.fedavg import fedavg
from bouquet.data import DataSpec, build_dataset
from bouquet.engine.autograd_training import train_sequential, train_vectorized
from bouquet.engine.batching import SplitArrays, round_batches
from bouquet.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = build_dataset(DataSpec(name="mnist5k", num_clients=args.clients, train_per_client=200,
                                  test_per_client=20, resample=True))
    torch.manual_seed(0)
    alg = fedavg(build_model("mlp", data.input_shape, data.num_outputs), data.objective, lr=0.1)
    arrays = SplitArrays.from_dataset(data, "train")
    ids = torch.arange(args.clients)
    index, weight = round_batches(arrays, ids, seed=0, round_idx=1, batch_size=32)
    batches = arrays.gather(index, weight)
    server, _ = alg.init(torch.Generator().manual_seed(0), data.clusters)
    payload = alg.broadcast(server)
    trainable = vmap(alg.client_init, in_dims=(None, 0, 0))(payload, {}, batches)

    def run(fn):
        t = time.perf_counter()
        out, _ = fn(alg.loss, alg.optimizer, dict(trainable), payload, {}, batches)
        return time.perf_counter() - t, out

    run(train_vectorized), run(train_sequential)  # warm-up
    tv, ts = [], []
    for _ in range(args.repeats):
        dt, out_v = run(train_vectorized)
        tv.append(dt)
        dt, out_s = run(train_sequential)
        ts.append(dt)
    err = max(float((out_v[k] - out_s[k]).abs().max()) for k in out_v)
    steps = int((weight.sum(2) > 0).sum(1).max())
    print(f"clients={args.clients} steps={steps} batch=32 threads={args.threads}")
    print(f"vectorized  median {statistics.median(tv) * 1e3:8.1f} ms")
    print(f"sequential  median {statistics.median(ts) * 1e3:8.1f} ms")
    print(f"speed-up (sequential / vectorized): {statistics.median(ts) / statistics.median(tv):.2f}x")
    print(f"max |vectorized - sequential| over parameters: {err:.2e}")


if __name__ == "__main__":
    main()
