"""The round driver: sample -> broadcast -> (client work) -> upload validation -> robust aggregation ->
aggregate -> record, written once for every engine.

An engine decides only *where* client work runs: the simulator trains the sampled clients in this
process (vectorized, a client loop, or the MLP kernels), the Flower strategy sends them messages.
Either way it hands the driver a ``ClientResults`` and gets back the new ``RunState`` and the round's
record (the keys of ``metrics.jsonl``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ..algorithms import Algorithm, payload_nbytes
from ..algorithms.contract import ClientStates, Payload, ServerState
from .robust import RobustConfig, guard_uploads, robust_uploads
from .validation import check_private

SAMPLER_STREAM = 7  # seeds the client sampler apart from every other random stream of a run


@dataclass
class RunState:
    """Everything that changes during a run (what a checkpoint holds). ``clients`` is empty on a Flower
    server: client states live on the SuperNodes."""

    round: int
    server: ServerState
    clients: ClientStates
    sampler: dict
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(frozen=True)
class ClientResults:
    """What the clients of one round sent back.

    ``ids`` [A] are the clients whose uploads are stacked in ``uploads`` [A, ...] with training losses
    ``losses`` [A] and, when the engine holds client states, their new ``private`` states [A, ...].
    ``refused`` are clients whose reply could not be stacked (missing or unexpected keys, wrong shapes;
    their losses in ``refused_losses``), ``failed`` the sampled clients that never replied.
    """

    ids: Tensor
    uploads: Payload
    losses: Tensor
    private: ClientStates | None = None
    refused: dict[int, str] = field(default_factory=dict)
    refused_losses: dict[int, float] = field(default_factory=dict)
    failed: tuple[int, ...] = ()
    bytes_up: int | None = None  # None: every stacked row's size


class RoundDriver:
    """Sampling, screening, aggregation and the round record of one algorithm on one federation."""

    def __init__(self, alg: Algorithm, num_examples: Tensor, *, clients_per_round: int, seed: int = 0,
                 robust: RobustConfig | None = None, min_accepted: int = 1):
        num_clients = len(num_examples)
        if clients_per_round > num_clients:
            raise ValueError(f"run.clients_per_round: {clients_per_round} is more than the {num_clients} clients "
                             f"of the dataset")
        self.alg, self.num_examples = alg, num_examples.long()
        self.num_clients, self.clients_per_round = num_clients, clients_per_round
        self.seed, self.robust, self.min_accepted = seed, robust, max(1, min_accepted)

    def init_state(self, clusters: Tensor) -> RunState:
        """The algorithm's initial server and client states and the seeded sampler (round 0)."""
        gen = torch.Generator().manual_seed(self.seed)
        server, clients = self.alg.init(gen, clusters)
        sampler = np.random.default_rng(np.random.SeedSequence([self.seed, SAMPLER_STREAM])).bit_generator.state
        return RunState(0, server, clients, sampler)

    def sample(self, state: RunState) -> tuple[Tensor, dict]:
        """Seeded client sampling without replacement; returns the sorted ids and the new RNG state."""
        rng = np.random.default_rng()
        rng.bit_generator.state = state.sampler
        ids = np.sort(rng.choice(self.num_clients, self.clients_per_round, replace=False))
        return torch.from_numpy(ids).long(), rng.bit_generator.state

    def finish(self, state: RunState, sampled: Tensor, sampler: dict, payload: Payload,
               results: ClientResults) -> tuple[RunState, dict]:
        """Screen the uploads, aggregate the accepted ones, store accepted clients' states, record the round."""
        alg, rnd = self.alg, state.round + 1
        check_private(alg, results.uploads)
        ids = results.ids
        uploads, accepted, report = guard_uploads(results.uploads, results.losses, payload, ids, self.robust,
                                                  self.num_clients, self.seed, rnd)
        n = self.num_examples[ids.cpu()].to(results.losses.device)
        kept = int(accepted.sum())
        skipped = kept < self.min_accepted
        server = state.server
        if not skipped:
            kept_uploads, kept_n = uploads, n  # the usual case, every upload accepted: no copy
            if not bool(accepted.all()):
                keep = accepted.nonzero().flatten().to(n.device)
                kept_uploads, kept_n = {k: v[keep] for k, v in uploads.items()}, n[keep]
            server = alg.aggregate(server, robust_uploads(kept_uploads, payload, self.robust), kept_n)
        clients = state.clients
        if results.private is not None and kept:
            mask = accepted.to(ids.device)
            clients = _scatter(clients, ids[mask], {k: v[mask.to(v.device)] for k, v in results.private.items()})
        up = results.bytes_up
        if up is None:
            up = payload_nbytes({k: v[0] for k, v in uploads.items()}) * len(ids) if len(ids) else 0
        down = payload_nbytes(payload) * len(sampled)
        record = {
            "round": rnd,
            "clients": sampled.tolist(),
            **self._losses(sampled, ids, results),
            "bytes_up": up,
            "bytes_down": down,
            "bytes_total": state.bytes_up + state.bytes_down + up + down,
        }
        record.update(_rejections(report, results.refused))
        if results.failed:
            record["failed"] = list(results.failed)
        if skipped:
            record["skipped"] = True
        new = replace(state, round=rnd, server=server, clients=clients, sampler=sampler,
                      bytes_up=state.bytes_up + up, bytes_down=state.bytes_down + down)
        return new, record

    def _losses(self, sampled: Tensor, ids: Tensor, results: ClientResults) -> dict:
        """The round's example-weighted training loss (clients with a finite loss) and each client's."""
        by_id = dict(zip(ids.tolist(), results.losses.detach().double().cpu().tolist(), strict=True))
        by_id.update(results.refused_losses)
        replied = [c for c in sampled.tolist() if c in by_id]
        losses = torch.tensor([by_id[c] for c in replied], dtype=torch.float64)
        w = self.num_examples[replied].to(torch.float64) * torch.isfinite(losses)  # diverged clients are left out
        mean = float((losses.nan_to_num(0.0, 0.0, 0.0) * w).sum() / w.sum()) if w.sum() > 0 else None
        return {"train_loss": mean,
                "client_train_loss": [round(by_id[c], 6) if c in by_id and math.isfinite(by_id[c]) else None
                                      for c in sampled.tolist()]}


def _rejections(report: dict, refused: dict[int, str]) -> dict:
    """``rejected`` ids and ``rejected_reasons`` (id -> why) of the validation report and refused replies."""
    reasons = {str(c): r for c, r in refused.items()}
    reasons.update(report.get("rejected_reasons", {}))
    if not reasons:
        return {}
    ordered = sorted(reasons, key=int)
    return {"rejected": [int(c) for c in ordered], "rejected_reasons": {c: reasons[c] for c in ordered}}


def _scatter(states: ClientStates, idx: Tensor, new: ClientStates) -> ClientStates:
    out = dict(states)
    for k, v in new.items():
        out[k] = states[k].index_copy(0, idx.to(states[k].device), v.to(states[k].dtype))
    return out


def select_clients(states: ClientStates, idx: Tensor) -> ClientStates:
    """The rows ``idx`` of every client-state entry."""
    return {k: v[idx.to(v.device)] for k, v in states.items()}
