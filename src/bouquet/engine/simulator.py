"""The in-process engine: seeded sampling, batched local training, aggregation, evaluation, bytes.

State is explicit (``SimState``) so that a run can be checkpointed and resumed; ``run_round`` and
``evaluate`` are the only two operations. ``vectorized=False`` runs the very same algorithm functions
client by client (the reference for tests, and the fallback for models vmap cannot handle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from ..algorithms.base import (
    Algorithm,
    ClientStates,
    LocalOptimizer,
    Params,
    ServerState,
    payload_nbytes,
    task_loss,
)
from ..config import RobustConfig
from ..data.federated import FederatedDataset
from .batching import FINETUNE, TRAIN, SplitArrays, round_batches
from .chain import chain_trainer
from .evaluation import ClientScores, personalized_params, score_params, summarize
from .robust import guard_uploads, robust_uploads
from .training import train_sequential, train_vectorized
from .validation import check_private


@dataclass(frozen=True)
class RunSpec:
    """How the federation is simulated (not what is learned)."""

    rounds: int
    clients_per_round: int
    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    eval_every: int = 1
    seed: int = 0
    vectorized: bool | str = "auto"  # True, False or "auto" (see resolve_vectorized); the Simulator resolves it
    eval_chunk: int = 64
    shuffle: bool = True
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    device: str = "cpu"
    robust: RobustConfig | None = None  # upload screening, robust aggregation, simulated attack
    hand_batched: bool = True  # chain models (MLPs) of algorithms with a loss_spec: engine/chain.py kernels


def resolve_vectorized(setting: bool | str, model: nn.Module, device: str) -> bool:
    """`run.vectorized` to a bool: "auto" runs clients one by one for conv models on CPU, vmapped otherwise.

    On CPU, vmap turns each client's convolution into one grouped convolution, which measured 1.2-2.4x
    slower than a loop over clients for FLoRAL's CNN (benchmarks/RESULTS.md); dense layers batch well.
    """
    if setting != "auto":
        return bool(setting)
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return not (has_conv and torch.device(device).type == "cpu")


@dataclass
class SimState:
    """Everything that changes during a run: what a checkpoint holds."""

    round: int
    server: ServerState
    clients: ClientStates
    sampler: dict
    bytes_up: int = 0
    bytes_down: int = 0
    history: list = field(default_factory=list)


def _select(states: ClientStates, idx: Tensor) -> ClientStates:
    return {k: v[idx] for k, v in states.items()}


def _scatter(states: ClientStates, idx: Tensor, new: ClientStates) -> ClientStates:
    out = dict(states)
    for k, v in new.items():
        out[k] = states[k].index_copy(0, idx.to(states[k].device), v.to(states[k].dtype))
    return out


class Simulator:
    """Runs one algorithm on one federated dataset; holds data arrays, not mutable run state."""

    def __init__(self, alg: Algorithm, data: FederatedDataset, spec: RunSpec):
        if spec.clients_per_round > data.num_clients:
            raise ValueError(f"run.clients_per_round: {spec.clients_per_round} is more than the "
                             f"{data.num_clients} clients of the dataset")
        spec = replace(spec, vectorized=resolve_vectorized(spec.vectorized, alg.model, spec.device))
        self.alg, self.data, self.spec = alg, data, spec
        self.device = torch.device(spec.device)
        self.train = SplitArrays.from_dataset(data, "train").to(self.device)
        self.test = SplitArrays.from_dataset(data, "test").to(self.device)
        self.clusters = data.clusters
        self.num_examples = data.train_sizes()
        self.trainer = partial(train_vectorized, alg.loss, alg.optimizer)
        chain = chain_trainer(alg.model, alg.task, alg.optimizer, alg.loss_spec, fallback=self.trainer) \
            if spec.vectorized and spec.hand_batched and alg.loss_spec is not None else None
        self.trainer = chain or self.trainer
        # Which local trainer runs (recorded in each run's summary): "chain kernels" may still hand
        # batches it cannot take to the vmap trainer.
        self.training_path = ("chain kernels" if chain else "vmap + autograd") if spec.vectorized else "sequential"

    # -- state ---------------------------------------------------------------------------------
    def init_state(self) -> SimState:
        gen = torch.Generator().manual_seed(self.spec.seed)
        server, clients = self.alg.init(gen, self.clusters)
        sampler = np.random.default_rng(np.random.SeedSequence([self.spec.seed, 7])).bit_generator.state
        return SimState(0, _to(server, self.device), _to(clients, self.device), sampler)

    def sample(self, state: SimState) -> tuple[Tensor, dict]:
        """Seeded client sampling without replacement; returns the sorted ids and the new RNG state."""
        rng = np.random.default_rng()
        rng.bit_generator.state = state.sampler
        ids = np.sort(rng.choice(self.data.num_clients, self.spec.clients_per_round, replace=False))
        return torch.from_numpy(ids).long(), rng.bit_generator.state

    # -- one round -----------------------------------------------------------------------------
    def run_round(self, state: SimState) -> tuple[SimState, dict]:
        alg, spec = self.alg, self.spec
        rnd = state.round + 1
        ids, sampler = self.sample(state)
        payload = alg.broadcast(state.server)
        index, weight = round_batches(self.train, ids, seed=spec.seed, round_idx=rnd, batch_size=spec.batch_size,
                                      epochs=spec.local_epochs, steps=spec.local_steps, purpose=TRAIN,
                                      shuffle=spec.shuffle)
        # Gathered step-major ([S, K, B, ...] in memory), seen as [K, S, B, ...]: the vectorized trainer walks
        # steps, so each step's block is contiguous without a copy.
        step_major = self.train.gather(index.transpose(0, 1).contiguous(), weight.transpose(0, 1).contiguous())
        batches = {k: v.transpose(0, 1) for k, v in step_major.items()}
        private = _select(state.clients, ids.to(self.device))
        n = self.num_examples[ids].to(self.device)
        if spec.vectorized:
            trainable = vmap(alg.client_init, in_dims=(None, 0, 0), randomness="different")(
                payload, private, batches)
            trained, losses = self.trainer(trainable, payload, private, batches)
            extra = (batches,) if alg.final_batches else ()
            uploads, new_private = vmap(alg.client_final, in_dims=(0, None, 0, 0) + (0,) * len(extra))(
                trained, payload, private, n, *extra)
        else:
            trainable = _stack([alg.client_init(payload, _row(private, k), _row(batches, k))
                                for k in range(len(ids))])
            trained, losses = train_sequential(alg.loss, alg.optimizer, trainable, payload, private, batches)
            outs = [alg.client_final(_row(trained, k), payload, _row(private, k), n[k],
                                     *((_row(batches, k),) if alg.final_batches else ())) for k in range(len(ids))]
            uploads, new_private = _stack([o[0] for o in outs]), _stack([o[1] for o in outs])
        check_private(alg, uploads)
        uploads, accepted, report = guard_uploads(uploads, losses, payload, ids, spec.robust, self.data.num_clients,
                                                  spec.seed, rnd)
        up_bytes = payload_nbytes({k: v[0] for k, v in uploads.items()}) * len(ids)
        down_bytes = payload_nbytes(payload) * len(ids)
        server = state.server
        if bool(accepted.any()):
            kept, kept_n = uploads, n  # the usual case, every upload accepted: no copy
            if not bool(accepted.all()):
                keep = accepted.nonzero().flatten()
                kept, kept_n = {k: v[keep] for k, v in uploads.items()}, n[keep]
            server = alg.aggregate(server, robust_uploads(kept, payload, spec.robust), kept_n)
        clients = _scatter(state.clients, ids[accepted.cpu()], {k: v[accepted] for k, v in new_private.items()})
        w = n.to(torch.float64).cpu() * torch.isfinite(losses).cpu()  # diverged clients are left out
        record = {
            "round": rnd,
            "clients": ids.tolist(),
            "train_loss": float((losses.double().cpu().nan_to_num(0.0, 0.0, 0.0) * w).sum() / w.sum())
            if w.sum() > 0 else None,
            "client_train_loss": [round(float(v), 6) if math.isfinite(float(v)) else None for v in losses],
            "bytes_up": up_bytes,
            "bytes_down": down_bytes,
            "bytes_total": state.bytes_up + state.bytes_down + up_bytes + down_bytes,
            **report,
        }
        new_state = replace(state, round=rnd, server=server, clients=clients, sampler=sampler,
                            bytes_up=state.bytes_up + up_bytes, bytes_down=state.bytes_down + down_bytes)
        return new_state, record

    # -- evaluation ----------------------------------------------------------------------------
    def client_scores(self, state: SimState) -> ClientScores:
        """Every client's personalized model (fine-tuned first when the run asks for it) on its test split."""
        alg, spec = self.alg, self.spec
        clients = torch.arange(self.data.num_clients)
        with torch.no_grad():
            if spec.finetune_epochs <= 0:
                return score_params(alg, lambda cs: alg.personalize(state.server, cs), state.clients, self.test,
                                    clients, vectorized=spec.vectorized, chunk=spec.eval_chunk)
        finetuned = self.finetune(state)
        return score_params(alg, lambda cs: cs, finetuned, self.test, clients,
                            vectorized=spec.vectorized, chunk=spec.eval_chunk)

    def finetune(self, state: SimState) -> ClientStates:
        """Personalized params of every client after local fine-tuning (evaluation only; state unchanged)."""
        alg, spec = self.alg, self.spec
        keep = alg.finetune_filter or (lambda name: True)
        lr = spec.finetune_lr if spec.finetune_lr is not None else alg.optimizer.lr
        opt = LocalOptimizer(lr=lr)

        def loss(trainable, shared, frozen, batch):
            return task_loss(alg.apply({**frozen, **trainable}, batch["x"]), batch["y"], batch["w"], alg.task)

        parts: list[Params] = []
        for start in range(0, self.data.num_clients, spec.eval_chunk):
            ids = torch.arange(start, min(self.data.num_clients, start + spec.eval_chunk))
            cs = _select(state.clients, ids.to(self.device))
            params = personalized_params(alg, state.server, cs, len(ids))
            trainable = {k: v for k, v in params.items() if keep(k)}
            frozen = {k: v for k, v in params.items() if not keep(k)}
            index, weight = round_batches(self.train, ids, seed=spec.seed, round_idx=state.round,
                                          batch_size=spec.batch_size, epochs=spec.finetune_epochs,
                                          purpose=FINETUNE, shuffle=spec.shuffle)
            batches = self.train.gather(index, weight)
            train = train_vectorized if spec.vectorized else train_sequential
            trained, _ = train(loss, opt, trainable, {}, frozen, batches)
            parts.append({**frozen, **{k: v.detach() for k, v in trained.items()}})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def evaluate(self, state: SimState) -> dict:
        scores = self.client_scores(state)
        return summarize(scores, self.clusters)


def _row(d: dict, k: int) -> dict:
    return {n: v[k] for n, v in d.items()}


def _stack(rows: list[dict]) -> dict:
    if not rows or not rows[0]:
        return {}
    return {n: torch.stack([r[n] for r in rows]) for n in rows[0]}


def _to(tree, device: torch.device):
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    if isinstance(tree, Tensor):
        return tree.to(device)
    return tree
