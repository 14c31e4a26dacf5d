"""The paper's theory, measured: variance of the shared model's pseudo-gradients and mixture-weight mismatch.

For FedAvg, FLoRAL and the Ensemble on one task and seed, each round's uploads are captured at the
server (the algorithm's ``aggregate``, wrapped) and we record

- ``client_var``: the across-client variance of the shared parameters' pseudo-gradients g_k = old - upload_k
  (trace of the covariance, weights n_k): FedAvg and FLoRAL's base over all sampled clients; the Ensemble's
  member c over its clients with weights p(k|c), summed over members;
- ``mean_var``: the variance of the server's averaged pseudo-gradient, sum_k w_k^2 ||g_k - g_bar||^2, the
  quantity the paper's variance-reduction claim is about (FLoRAL's base: w_k = n_k / sum n; an Ensemble
  member: w_k = p(k|c), about C times fewer effective clients);
- ``relative_var``: mean_var / ||g_bar||^2 (the Ensemble scales member c's update by pi_c; the ratio does not);
- ``mismatch``: mean over the round's clients of ||pi_k - pi*_k||_1, pi* the optimal router's one-hot under
  the best matching of components to clusters (routed methods).

    OMP_NUM_THREADS=1 python benchmarks/floral/variance.py configs/floral/fmnist5_rotate.toml --rounds 300 \
        --out benchmarks/floral/out/variance.json --figure docs/floral_variance.png
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from bouquet.adapters import member_of, param_role
from bouquet.algorithms.routing import MIXTURE_WEIGHT
from bouquet.app.config import load_experiment
from bouquet.app.experiment import dataset_for_seed
from bouquet.app.runner import simulator


def weighted_var(g: torch.Tensor, w: torch.Tensor) -> tuple[float, float, float]:
    """(sum_k w_k ||g_k - g_bar||^2, sum_k w_k^2 ||g_k - g_bar||^2, ||g_bar||^2) with w normalised; g is [K, P]."""
    w = w / w.sum().clamp_min(1e-30)
    mean = (w[:, None] * g).sum(0)
    dev = ((g - mean) ** 2).sum(1)
    return float((w * dev).sum()), float((w ** 2 * dev).sum()), float((mean ** 2).sum())


def mismatch(pi: torch.Tensor, clusters: torch.Tensor) -> float:
    """Mean ||pi_k - onehot(match(cluster_k))||_1 over clients, minimised over matchings of components."""
    num = pi.shape[1]
    best = float("inf")
    for perm in itertools.permutations(range(num)):
        target = torch.nn.functional.one_hot(torch.tensor(perm)[clusters.long() % num], num).to(pi.dtype)
        best = min(best, float((pi - target).abs().sum(1).mean()))
    return best


def measure(config: str, algorithm: str, seed: int, rounds: int) -> list[dict]:
    """Run ``algorithm`` for ``rounds`` and return one record per round."""
    exp = load_experiment(config, [f"run.rounds={rounds}"])
    data = dataset_for_seed(exp, seed)
    sim, _ = simulator(exp, data, algorithm, seed)
    records: list[dict] = []
    inner = sim.alg.aggregate

    def aggregate(server, uploads, num_examples):
        old = server["params"]
        n = num_examples.to(torch.float64)
        pi = uploads.get(MIXTURE_WEIGHT)
        rec = {"client_var": 0.0, "mean_var": 0.0, "mean_sq": 0.0}
        groups: dict[int, list[str]] = {}
        for k in old:
            if k in uploads and (param_role(k) == "base" or k.startswith("members.")):
                groups.setdefault(member_of(k) if k.startswith("members.") else -1, []).append(k)
        for c, names in groups.items():
            g = torch.cat([(old[k][None] - uploads[k]).flatten(1).to(torch.float64) for k in names], 1)
            w = n if c < 0 else n * pi[:, c].to(torch.float64)
            cv, mv, sq = weighted_var(g, w)
            rec["client_var"] += cv
            rec["mean_var"] += mv
            rec["mean_sq"] += sq
        # Noise of the averaged update relative to its size: free of the Ensemble's pi_c scaling of its members.
        rec["relative_var"] = rec["mean_var"] / max(rec["mean_sq"], 1e-30)
        if pi is not None:
            rec["mismatch"] = mismatch(pi.to(torch.float64).cpu(), sim.clusters[records_ids[-1]].cpu())
        records.append(rec)
        return inner(server, uploads, num_examples)

    records_ids: list[torch.Tensor] = []
    sample = sim.driver.sample

    def sampled(state):
        ids, sampler = sample(state)
        records_ids.append(ids.cpu())
        return ids, sampler

    sim.driver.sample = sampled
    sim.alg = dataclasses.replace(sim.alg, aggregate=aggregate)
    sim.driver.alg = sim.alg
    state = sim.init_state()
    for _ in range(rounds):
        state, _ = sim.run_round(state)
    return records


def figure(results: dict, path: str, window: int = 20) -> None:
    """Two panels: the averaged pseudo-gradient's variance and the mixture-weight mismatch, by round."""
    import matplotlib  # optional dependency (the `plot` extra), only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
    for name, recs in results.items():
        a.plot(smooth([r["relative_var"] for r in recs]), label=name)
        if "mismatch" in recs[0]:
            b.plot(smooth([r["mismatch"] for r in recs]), label=name)
    a.set(yscale="log", xlabel="round", title="noise / signal of the averaged shared update",
          ylabel="sum w_k^2 |g_k - g|^2 / |g|^2")
    b.set(xlabel="round", title="mixture-weight mismatch |pi - pi*|_1")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--algorithms", default="fedavg,floral,ensemble")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--out", required=True)
    p.add_argument("--figure", default=None)
    p.add_argument("--plot-only", action="store_true", help="read --out instead of running")
    args = p.parse_args(argv)
    if args.plot_only:
        results = json.loads(Path(args.out).read_text())
    else:
        results = {a: measure(args.config, a, args.seed, args.rounds) for a in args.algorithms.split(",")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results))
    for name, recs in results.items():
        last = recs[-50:]
        print(name, {k: float(np.mean([r[k] for r in last])) for k in last[0]})
    if args.figure:
        figure(results, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
