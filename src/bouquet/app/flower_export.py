"""A client's personalized model read from a SuperNode's state directory, on the node (``bouquet export``).

The model never leaves the node during a run: the node's ``state-dir`` holds each client's private state
(router, local adaptor, head) and the server state it last evaluated with (``flower.node_state``). From
both and the experiment, ``node_personalized`` rebuilds ``alg.personalize(server, private)``, exactly the
parameters the client's last evaluation scored. Writing them out (safetensors, peft) is the export
command's job; this module only reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..checks import ConfigError
from ..flower.job import FlowerJob
from ..flower.node_state import DirStore
from ..flower.records import flatten_state
from .flower_job import experiment_of, load_job, node_dir, node_job


def run_directory(state_dir: str | Path, run: str | None = None) -> Path:
    """The run's subdirectory of a node's ``state-dir`` (``run`` names it; alone, it needs no name)."""
    root = Path(state_dir)
    runs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if run is not None:
        if run not in runs:
            raise ConfigError(f"--run: {run!r} is not a run of {root} (runs: {', '.join(runs) or 'none'})")
        return root / run
    if len(runs) != 1:
        raise ConfigError(f"--node-state {root}: expected one run, found {len(runs)} ({', '.join(runs) or 'none'});"
                          " name one with --run")
    return root / runs[0]


def node_client_state(state_dir: str | Path, cid: int, run: str | None = None) -> dict[str, Tensor]:
    """Client ``cid``'s newest private state on the node (what the run's next round would start from)."""
    store = DirStore(run_directory(state_dir, run))
    got = store.get(cid, before=2**62)
    if got is None:
        raise ConfigError(f"--client: client {cid} has no saved state in {store.dir} (clients: "
                          f"{sorted({c for c in _clients(store)})})")
    return got[0]


def _clients(store: DirStore) -> set[int]:
    return {int(p.name[1:].split("-")[0]) for p in store.dir.glob("c*-r*.ckpt")}


def node_model(run_config: dict, state_dir: str | Path, cid: int, data_dir: str | None = None,
               run: str | None = None) -> tuple[FlowerJob, dict]:
    """The node's job and client ``cid``'s personalized parameters (``alg.personalize``), rebuilt on the node
    from its state directory.

    ``run_config`` names the experiment as for the ClientApp (``experiment`` or ``config``, ``algorithm``,
    ``seed``); ``data_dir``: the node's data directory when it has one (the model's shapes come from it).
    """
    store = DirStore(run_directory(state_dir, run))
    saved = store.server()
    if saved is None:
        raise ConfigError(f"--node-state {store.dir}: no server.ckpt (the node has not evaluated yet)")
    private = node_client_state(state_dir, cid, store.dir.name)
    if data_dir is not None:
        nd = node_dir(data_dir)
        exp = experiment_of(run_config)[0]
        job = node_job(run_config, data_dir, exp.data.num_clients, nd.data.total_train_examples())
    else:
        job = load_job(run_config)
    with torch.no_grad():
        return job, job.alg.personalize(saved["server"], private)


def node_personalized(run_config: dict, state_dir: str | Path, cid: int, data_dir: str | None = None,
                      run: str | None = None) -> dict[str, Tensor]:
    """Client ``cid``'s personalized parameters (flat names), exactly those its last evaluation scored."""
    return flatten_state(node_model(run_config, state_dir, cid, data_dir, run)[1])[0]
