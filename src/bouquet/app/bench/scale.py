"""``bouquet bench scale``: FLoRAL with 1,000 to 100,000 registered clients, 100 sampled per round.

The federation is built directly from mnist5k as index-pooled clients (``PooledClients``): each client
draws ``train``/``test`` rows with replacement from disjoint train/test pools (label-shift clusters) and
holds only their pool row indices and its labels; the features are the pool's, stored once. What is
measured is the engine: seconds per round, one evaluation of every client, peak RSS, the bytes of the
data and of client state (FLoRAL's router logits only, never a model copy per client), and the size of a
checkpoint of the run's state.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import torch

from ...data.federated import FederatedDataset, PooledClients
from ...data.sources import load_source
from ...engine.checkpoint import encode_checkpoint
from ...engine.rounds import RunState
from ...engine.simulator import Simulator
from ...engine.spec import RunSpec
from ...engine.summary import RunLog
from .workload import Workload, build_floral, peak_rss_mb


def many_clients(num_clients: int, train: int = 20, test: int = 5, num_clusters: int = 4,
                 seed: int = 0) -> FederatedDataset:
    """A label-shift federation of ``num_clients`` pooled clients over mnist5k rows (drawn with replacement)."""
    src = load_source("mnist5k")
    x_pool, y_pool = src.gather(torch.arange(src.num_train_pool))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y_pool))
    train_pool, test_pool = perm[:4000], perm[4000:]
    rows_tr = torch.from_numpy(rng.choice(train_pool, (num_clients, train)))
    rows_te = torch.from_numpy(rng.choice(test_pool, (num_clients, test)))
    cluster = torch.arange(num_clients) % num_clusters
    y_tr = (y_pool[rows_tr] + cluster[:, None]) % src.num_classes
    y_te = (y_pool[rows_te] + cluster[:, None]) % src.num_classes
    clients = PooledClients.build(x_pool, cluster, rows_tr, y_tr, rows_te, y_te)
    return FederatedDataset("mnist5k_many", clients, tuple(src.image_shape), src.num_classes, "classification",
                            num_clusters, {"note": "bench.scale: rows drawn with replacement, pooled clients"})


def checkpoint_bytes(sim: Simulator, state: RunState, evaluation: dict) -> tuple[int, float]:
    """Bytes and seconds of encoding a checkpoint of ``state`` with ``evaluation`` logged (as the runner does)."""
    t = time.perf_counter()
    log = RunLog(sim.metric, keep=False)
    log.add({"round": state.round, "eval": {"metric": sim.metric, **evaluation}})
    body = encode_checkpoint({"state": {f.name: getattr(state, f.name) for f in fields(state)}, **log.snapshot()})
    return len(body), time.perf_counter() - t


def run_scale(num_clients: int, rounds: int = 10, per_round: int = 100, warmup: int = 2, threads: int = 2) -> dict:
    """Seconds per round, one full evaluation, peak RSS, data, client-state and checkpoint bytes at ``num_clients``."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    data = many_clients(num_clients)
    build_s = time.perf_counter() - t
    w = Workload(num_clients=num_clients, clients_per_round=per_round, train_per_client=20)
    alg = build_floral(w, data)
    t = time.perf_counter()
    sim = Simulator(alg, data, RunSpec(rounds=rounds, clients_per_round=per_round, batch_size=w.batch_size,
                                       eval_every=rounds, eval_chunk=500))
    setup_s = time.perf_counter() - t
    state = sim.init_state()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        state, _ = sim.run_round(state)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    evaluation = sim.evaluate(state)
    eval_s = time.perf_counter() - t
    ckpt, ckpt_s = checkpoint_bytes(sim, state, evaluation)
    client_bytes = sum(v.numel() * v.element_size() for v in state.clients.values())
    model_bytes = sum(v.numel() * v.element_size() for v in state.server["params"].values())
    engine_bytes = sum(t.numel() * t.element_size() for a in (sim.train, sim.test)
                       for t in (a.x, a.y, a.rows if a.rows is not None else a.x[:0]))
    return {"clients": num_clients, "per_round": per_round, "rounds": rounds, "build_s": build_s,
            "setup_s": setup_s, "round_s": times, "round_s_median": statistics.median(times[warmup:] or times),
            "eval_all_s": eval_s, "accuracy": evaluation["mean"], "client_state_bytes": client_bytes,
            "client_state_keys": sorted(state.clients), "model_bytes": model_bytes,
            "data_bytes": data.pooled.nbytes() if data.pooled is not None else None, "engine_data_bytes": engine_bytes,
            "checkpoint_bytes": ckpt, "checkpoint_s": ckpt_s, "peak_rss_mb": peak_rss_mb(), "threads": threads}


def interleaved_scale(counts: list[int], rounds: int = 10, per_round: int = 100, warmup: int = 2,
                       threads: int = 2) -> list[dict]:
    """Seconds per round at each number of registered clients, their rounds alternated in one process (the
    order rotating each round), so that a shared machine's load falls on every count alike."""
    torch.set_num_threads(threads)
    sims, states, times = [], [], [[] for _ in counts]
    for n in counts:
        data = many_clients(n)
        w = Workload(num_clients=n, clients_per_round=per_round, train_per_client=20)
        sims.append(Simulator(build_floral(w, data), data, RunSpec(rounds=rounds, clients_per_round=per_round,
                                                                   batch_size=w.batch_size)))
        states.append(sims[-1].init_state())
    for r in range(rounds):
        for j in [(r + i) % len(counts) for i in range(len(counts))]:
            t = time.perf_counter()
            states[j], _ = sims[j].run_round(states[j])
            times[j].append(time.perf_counter() - t)
    medians = [statistics.median(t[warmup:] or t) for t in times]
    return [{"clients": n, "round_s": t, "round_s_median": m, "ratio": m / medians[0], "threads": threads}
            for n, t, m in zip(counts, times, medians, strict=True)]


def interleaved_scale_table(results: list[dict]) -> str:
    """The markdown table of ``interleaved_scale``."""
    lines = ["| registered clients | s/round (median, interleaved) | vs the first |", "|---|---|---|"]
    lines += [f"| {r['clients']} | {r['round_s_median']:.3f} | {r['ratio']:.2f}x |" for r in results]
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    """The markdown table of ``bench scale`` results, one row per number of registered clients."""
    lines = ["| registered clients | s/round (median) | evaluate all s | accuracy | client state | data (pooled) | "
             "checkpoint | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['clients']} | {r['error']} | | | | | | |")
            continue
        data = f"{r['data_bytes'] / 1e6:.1f} MB" if r.get("data_bytes") is not None else "-"
        lines.append(f"| {r['clients']} | {r['round_s_median']:.3f} | {r['eval_all_s']:.2f} | {r['accuracy']:.3f} | "
                     f"{r['client_state_bytes'] / 1e3:.0f} kB ({', '.join(r['client_state_keys'])}) | {data} | "
                     f"{r['checkpoint_bytes'] / 1e6:.2f} MB | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def spawn(num_clients: int, rounds: int, per_round: int, threads: int) -> dict:
    """One scale point in a fresh interpreter, for its own peak RSS."""
    code = ("import json, sys; from bouquet.app.bench.scale import run_scale; "
            f"print(json.dumps(run_scale({num_clients}, {rounds}, {per_round}, threads={threads})))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return {"clients": num_clients, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])
