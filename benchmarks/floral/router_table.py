"""Which clusters share a router component: clients by true cluster (rows) and router argmax (columns).

Reads each run directory's last checkpoint (the clients' private router logits) and rebuilds the run's dataset
from its ``config.toml`` for the true clusters. Usage::

    python benchmarks/floral/router_table.py benchmarks/floral/out/fashion_mnist_label_shift/floral_em/seed0 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bouquet.algorithms.routing import ROUTER
from bouquet.app.config import load_experiment
from bouquet.app.experiment import dataset_for_seed
from bouquet.engine.checkpoint import load_checkpoint


def router_table(run: Path) -> tuple[str, torch.Tensor]:
    """(the checkpoint read, the [clusters, components] count table) of one run directory."""
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    if not checkpoints:
        raise SystemExit(f"{run}: no checkpoints/*.ckpt (expected a bouquet run directory)")
    saved = load_checkpoint(checkpoints[-1])
    state = saved["state"] if isinstance(saved, dict) and "state" in saved else saved
    clients = state["clients"] if isinstance(state, dict) else state.clients
    if ROUTER not in clients:
        raise SystemExit(f"{run}: the clients hold no {ROUTER} (not a routed algorithm)")
    pick = clients[ROUTER].argmax(-1)
    seed = int(run.name.removeprefix("seed"))
    data = dataset_for_seed(load_experiment(run / "config.toml"), seed)
    clusters = torch.as_tensor([c.cluster for c in data.clients])
    table = torch.zeros(int(clusters.max()) + 1, clients[ROUTER].shape[1], dtype=torch.long)
    table.index_put_((clusters, pick), torch.ones_like(pick), accumulate=True)
    return checkpoints[-1].name, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (.../<algorithm>/seed<k>)")
    for run in p.parse_args().runs:
        name, table = router_table(run)
        print(f"{run} ({name}): rows true cluster, columns router argmax")
        for c, row in enumerate(table.tolist()):
            print(f"  cluster {c}: " + " ".join(f"{n:4d}" for n in row))


if __name__ == "__main__":
    main()
