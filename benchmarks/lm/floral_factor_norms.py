"""FLoRAL's training dynamics on an LM config, from training rows only: per round, each client's training loss
and the largest norm over layers of the server's A, B, B A and adaptor bias (no test row is read).

    OMP_NUM_THREADS=1 python benchmarks/lm/floral_factor_norms.py configs/lm/shakespeare_smollm2.toml 0 \
        run.threads=1 algo.floral.max_step_norm=100.0
"""

from __future__ import annotations

import sys

import torch

from bouquet.app.config import load_experiment, with_run
from bouquet.app.experiment import dataset_for_seed
from bouquet.app.runner import simulator


def largest(params: dict, suffix: str) -> float:
    """The largest Frobenius norm among tensors whose name ends with ``suffix`` (0 when none)."""
    return max((float(v.norm()) for k, v in params.items() if k.endswith(suffix)), default=0.0)


def largest_product(params: dict) -> float:
    """The largest norm of an adaptor's B A over layers and components (C-stacked factors)."""
    out = 0.0
    for k, a in params.items():
        if k.endswith("lora_A"):
            b = params[k[: -len("A")] + "B"]
            out = max(out, float(torch.einsum("cor,cri->coi", b, a).norm()))
    return out


def main() -> None:
    cfg, seed, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    exp = load_experiment(cfg, overrides)
    data = dataset_for_seed(exp, seed)
    sim, _ = simulator(with_run(exp, seeds=[seed]), data, "floral", seed)
    state = sim.init_state()
    for _ in range(exp.run.rounds):
        state, rec = sim.run_round(state)
        p = state.server["params"]
        print(f"round {state.round} train loss {[round(x, 2) for x in rec['client_train_loss']]} "
              f"max|A| {largest(p, 'lora_A'):.2f} max|B| {largest(p, 'lora_B'):.3f} "
              f"max|BA| {largest_product(p):.3f} max|bias| {largest(p, 'lora_bias'):.3f}", flush=True)


if __name__ == "__main__":
    main()
