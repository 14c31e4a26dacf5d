"""``bouquet bench scale``: FLoRAL with 1,000 or 10,000 registered clients, 100 sampled per round.

The federation is built directly from mnist5k (each client draws ``train``/``test`` rows with
replacement from disjoint train/test pools, label-shift clusters), with every client's tensors views
of one float16 block, so building 10,000 clients takes seconds and costs little beyond the engine's copy. What is
measured is the engine: seconds per round, one evaluation of every client, peak RSS and the bytes
of client state (FLoRAL's router logits only, never a model copy per client).
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch

from ...data.federated import ClientData, FederatedDataset
from ...data.sources import load_source
from ...engine.simulator import Simulator
from ...engine.spec import RunSpec
from .workload import Workload, build_floral, peak_rss_mb


def many_clients(num_clients: int, train: int = 20, test: int = 5, num_clusters: int = 4,
                 seed: int = 0) -> FederatedDataset:
    """A label-shift federation of ``num_clients`` clients over mnist5k rows (drawn with replacement)."""
    src = load_source("mnist5k")
    x_pool, y_pool = src.gather(torch.arange(src.num_train_pool))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y_pool))
    train_pool, test_pool = perm[:4000], perm[4000:]
    rows_tr = torch.from_numpy(rng.choice(train_pool, (num_clients, train)))
    rows_te = torch.from_numpy(rng.choice(test_pool, (num_clients, test)))
    cluster = torch.arange(num_clients) % num_clusters
    # [N, n, 1, 28, 28], each client's data a view; float16 halves the dataset's own copy (the engine
    # keeps its float32 one), at a rounding of the pixel values below 1e-3.
    x_pool = x_pool.half()
    x_tr, x_te = x_pool[rows_tr], x_pool[rows_te]
    y_tr = (y_pool[rows_tr] + cluster[:, None]) % src.num_classes
    y_te = (y_pool[rows_te] + cluster[:, None]) % src.num_classes
    clients = tuple(ClientData(x_tr[k], y_tr[k], x_te[k], y_te[k], int(cluster[k]), rows_tr[k], rows_te[k])
                    for k in range(num_clients))
    return FederatedDataset("mnist5k_many", clients, tuple(src.image_shape), src.num_classes, "classification",
                            num_clusters, {"note": "bench.scale: rows drawn with replacement"})


def run_scale(num_clients: int, rounds: int = 10, per_round: int = 100, warmup: int = 2, threads: int = 2) -> dict:
    """Seconds per round, one full evaluation, peak RSS and client-state bytes at ``num_clients`` clients."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    data = many_clients(num_clients)
    build_s = time.perf_counter() - t
    w = Workload(num_clients=num_clients, clients_per_round=per_round, train_per_client=20)
    alg = build_floral(w, data)
    sim = Simulator(alg, data, RunSpec(rounds=rounds, clients_per_round=per_round, batch_size=w.batch_size,
                                       eval_every=rounds, eval_chunk=500))
    state = sim.init_state()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        state, _ = sim.run_round(state)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    acc = sim.evaluate(state)["mean"]
    eval_s = time.perf_counter() - t
    client_bytes = sum(v.numel() * v.element_size() for v in state.clients.values())
    model_bytes = sum(v.numel() * v.element_size() for v in state.server["params"].values())
    return {"clients": num_clients, "per_round": per_round, "rounds": rounds, "build_s": build_s,
            "round_s_median": statistics.median(times[warmup:] or times), "eval_all_s": eval_s,
            "accuracy": acc, "client_state_bytes": client_bytes,
            "client_state_keys": sorted(state.clients), "model_bytes": model_bytes,
            "peak_rss_mb": peak_rss_mb(), "threads": threads}


def table(results: list[dict]) -> str:
    lines = ["| registered clients | s/round (median) | evaluate all s | client state | one model | peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['clients']} | {r['error']} | | | | |")
            continue
        lines.append(f"| {r['clients']} | {r['round_s_median']:.3f} | {r['eval_all_s']:.2f} | "
                     f"{r['client_state_bytes'] / 1e3:.0f} kB ({', '.join(r['client_state_keys'])}) | "
                     f"{r['model_bytes'] / 1e6:.2f} MB | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def spawn(num_clients: int, rounds: int, per_round: int, threads: int) -> dict:
    """One scale point in a fresh interpreter, for its own peak RSS."""
    import os
    import subprocess
    import sys

    code = ("import json, sys; from bouquet.app.bench.scale import run_scale; "
            f"print(json.dumps(run_scale({num_clients}, {rounds}, {per_round}, threads={threads})))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return {"clients": num_clients, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])
