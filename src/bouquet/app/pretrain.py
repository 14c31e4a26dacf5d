"""The ``[pretrain]`` stage: train the base model on a public split disjoint from every client's rows.

Every algorithm of the experiment then starts from these weights (the personalization methods on a
frozen base, FedIT, Potara, ..., are what it is for); it runs before any algorithm is built. The
public rows are drawn from the same image source's training pool, excluding every row any client
uses (train or test), with the original labels (no cluster shift). Training is centralized SGD or
FedAvg over ``clients`` IID public clients. Results are cached in-process and, with ``save``, on disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..algorithms.fedavg import fedavg
from ..checks import require
from ..data.federated import ClientData, DataError, FederatedDataset
from ..data.sources import load_source
from ..data.spec import DEFAULT_PATHS
from ..data.transforms import standardize
from ..engine.simulator import Simulator
from ..engine.spec import RunSpec

MODES = ("centralized", "fedavg")
_CACHE: dict[str, dict[str, torch.Tensor]] = {}


@dataclass(frozen=True)
class PretrainConfig:
    """Public split size, training mode and schedule; ``save`` is a directory for the trained weights."""

    #: how the base model is pretrained on the public rows: 'centralized' or 'fedavg'
    mode: str = "centralized"
    #: public rows held out of the source's train pool (used by no client) for pretraining
    rows: int = 10000
    #: pretraining epochs (centralized) or local epochs per round (fedavg)
    epochs: int = 5
    #: pretraining SGD learning rate
    lr: float = 0.05
    #: pretraining mini-batch size
    batch_size: int = 64
    #: with mode = 'fedavg': clients the public rows are split over
    clients: int = 10
    #: with mode = 'fedavg': pretraining rounds
    rounds: int = 10
    #: seed of the public split and of pretraining
    seed: int = 0
    #: directory to save the pretrained weights in (none: not saved)
    save: str | None = None

    def check(self, s: str) -> None:
        require(self.mode in MODES, f"{s}.mode", f"one of {list(MODES)}", self.mode)
        for k in ("rows", "epochs", "batch_size", "clients", "rounds"):
            require(getattr(self, k) >= 1, f"{s}.{k}", "an integer >= 1", getattr(self, k))
        require(self.lr > 0, f"{s}.lr", "a number > 0", self.lr)


def _source_of(data: FederatedDataset):
    spec = data.meta.get("spec")
    if spec is None or data.meta.get("source") is None:
        raise DataError(f"pretrain: dataset {data.name!r} is not built from an image source; "
                        "a [pretrain] stage needs one (mnist, fashion_mnist, cifar10, cifar100, digits, mnist5k)")
    path = spec["path"] if spec["path"] is not None else DEFAULT_PATHS.get(spec["name"])
    return spec, load_source(spec["name"], path)


def public_rows(data: FederatedDataset, cfg: PretrainConfig) -> torch.Tensor:
    """Pool ids of ``cfg.rows`` rows of the source's train pool that no client uses (train or test)."""
    spec, src = _source_of(data)
    used = torch.cat([torch.cat([c.train_ids, c.test_ids]) for c in data.clients]).numpy()
    free = np.setdiff1d(np.arange(src.num_train_pool), used)
    if len(free) < cfg.rows:
        raise DataError(f"pretrain.rows: only {len(free)} rows of {spec['name']} are unused by the clients, "
                        f"expected at most that many, got {cfg.rows}")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, spec["seed"], 11]))
    return torch.from_numpy(np.sort(rng.choice(free, cfg.rows, replace=False)))


def public_split(data: FederatedDataset, cfg: PretrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and original labels of ``public_rows``, normalized like the clients' rows."""
    _, src = _source_of(data)
    x, y = src.gather(public_rows(data, cfg))
    norm = data.meta.get("normalization")
    if norm is not None:
        x = standardize(x, torch.tensor(norm["mean"]), torch.tensor(norm["std"]))
    return x, y


def train_centralized(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: PretrainConfig) -> nn.Module:
    """Plain minibatch SGD with cross-entropy, seeded by ``cfg.seed``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


def train_fedavg(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_outputs: int,
                 cfg: PretrainConfig) -> nn.Module:
    """FedAvg over ``cfg.clients`` IID shares of the public rows (our simulator, full participation)."""
    parts = np.array_split(np.random.default_rng(cfg.seed).permutation(len(y)), cfg.clients)
    clients = tuple(ClientData(x[p], y[p], x[p[:1]], y[p[:1]], 0, torch.from_numpy(p),
                               torch.tensor([-1 - i])) for i, p in enumerate(parts))
    fd = FederatedDataset("public", clients, tuple(x.shape[1:]), num_outputs, "classification", 1)
    alg = fedavg(model, "classification", lr=cfg.lr)
    sim = Simulator(alg, fd, RunSpec(rounds=cfg.rounds, clients_per_round=cfg.clients, batch_size=cfg.batch_size,
                                     local_epochs=cfg.epochs), seed=cfg.seed)
    state = sim.init_state()
    for _ in range(cfg.rounds):
        state, _ = sim.run_round(state)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state.server["params"][name])
    return model


def _key(exp, data: FederatedDataset, model: nn.Module) -> str:
    blob = json.dumps({"pretrain": asdict(exp.pretrain), "data": data.meta.get("spec"), "model": exp.model.name,
                       "options": exp.model.options, "shapes": [list(p.shape) for p in model.parameters()]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_pretrained(model: nn.Module, exp, data: FederatedDataset) -> nn.Module:
    """``model`` with pretrained weights when ``exp`` has a [pretrain] table (trained once, then cached)."""
    cfg = getattr(exp, "pretrain", None)
    if cfg is None:
        return model
    key = _key(exp, data, model)
    path = Path(cfg.save) / f"pretrain-{key}.pt" if cfg.save else None
    if key not in _CACHE and path is not None and path.is_file():
        _CACHE[key] = torch.load(path, map_location="cpu", weights_only=True)
    if key not in _CACHE:
        x, y = public_split(data, cfg)
        # Own RNG stream: whatever the caller draws next (LoRA init) must not depend on whether the
        # weights came from the cache or were trained just now.
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            if cfg.mode == "centralized":
                train_centralized(model, x, y, cfg)
            else:
                train_fedavg(model, x, y, data.num_outputs, cfg)
        _CACHE[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(_CACHE[key], tmp)
            tmp.replace(path)
    model.load_state_dict(_CACHE[key])
    return model
