"""Client data as flat tensors, and the pre-built batches of a round as index tensors.

All clients' rows live in one concatenated tensor per split (no per-client padding); a round's
batches are an index tensor ``[K, S, B]`` into it plus example weights ``w`` (0 = padding). For
index-pooled clients (``PooledClients``) the features are the pool's, stored once, and a client row
reads its pool row through ``rows``: batches are gathered from the pool, never from per-client copies. Shuffles
come from a generator seeded by (seed, round, client, purpose), so a client's batches do not
depend on which other clients were sampled or on the engine that runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.federated import FederatedDataset, PooledClients

# purposes of a client's random stream
TRAIN, FINETUNE = 0, 1


@dataclass(frozen=True)
class SplitArrays:
    """One split of every client, concatenated: rows of client k are ``offsets[k]:offsets[k]+sizes[k]``.

    ``y`` holds every client row; ``x`` holds every client row too, or (``rows`` given: pooled clients)
    the pool's rows, client row ``i`` reading ``x[rows[i]]``.
    """

    x: Tensor
    y: Tensor
    offsets: Tensor
    sizes: Tensor
    rows: Tensor | None = None

    @staticmethod
    def from_dataset(data: FederatedDataset, split: str) -> SplitArrays:
        """The split's arrays: one float32 copy of the clients' features (of the pool, for pooled clients)."""
        if isinstance(data.clients, PooledClients):
            return SplitArrays.from_pooled(data.clients, split)
        xs = [getattr(c, f"x_{split}") for c in data.clients]
        ys = [getattr(c, f"y_{split}") for c in data.clients]
        sizes = torch.tensor([t.shape[0] for t in xs], dtype=torch.long)
        offsets = torch.cumsum(sizes, 0) - sizes
        # Copy into one preallocated float32 block: no intermediate concatenation in the clients' dtype,
        # so the peak is the clients' data plus this one copy (it matters at 10,000 clients). Token ids
        # (int64) stay integers.
        dtype = torch.float32 if xs[0].is_floating_point() else xs[0].dtype
        x = torch.empty(int(sizes.sum()), *xs[0].shape[1:], dtype=dtype)
        for start, t in zip(offsets.tolist(), xs, strict=True):
            x[start:start + t.shape[0]] = t
        return SplitArrays(x, torch.cat(ys).contiguous(), offsets, sizes)

    @staticmethod
    def from_pooled(clients: PooledClients, split: str) -> SplitArrays:
        """Pooled clients' split: the pool in float32 (token ids stay integers), the clients' rows as indices."""
        s = clients.split(split)
        x = clients.x_pool.float() if clients.x_pool.is_floating_point() else clients.x_pool
        return SplitArrays(x.contiguous(), s.y.contiguous(), s.offsets, s.sizes.clone(), s.rows.contiguous())

    def to(self, device: torch.device | str) -> SplitArrays:
        rows = None if self.rows is None else self.rows.to(device)
        return SplitArrays(self.x.to(device), self.y.to(device), self.offsets, self.sizes, rows)

    def gather(self, index: Tensor, weight: Tensor) -> dict[str, Tensor]:
        """Batches for an index tensor of any leading shape: {"x", "y", "w"}."""
        index = index.to(self.y.device)
        rows = index if self.rows is None else self.rows[index]
        wdtype = self.x.dtype if self.x.is_floating_point() else torch.float32
        return {"x": self.x[rows], "y": self.y[index], "w": weight.to(self.x.device, wdtype)}


def client_rng(seed: int, round_idx: int, client: int, purpose: int) -> np.random.Generator:
    """The random stream of one client in one round; independent of sampling and engine."""
    return np.random.default_rng(np.random.SeedSequence([seed, round_idx, client, purpose]))


def _client_order(n: int, steps: int | None, epochs: int, batch_size: int,
                  rng: np.random.Generator, shuffle: bool) -> list[np.ndarray]:
    """Local row indices of each local step for one client."""
    def perm() -> np.ndarray:
        return rng.permutation(n) if shuffle else np.arange(n)

    if steps is None:  # epochs: ceil(n / B) batches each, the last one partial
        out: list[np.ndarray] = []
        for _ in range(epochs):
            order = perm()
            out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
        return out
    stream = np.concatenate([perm() for _ in range(math.ceil(steps * batch_size / n))])
    return [stream[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def round_batches(arrays: SplitArrays, clients: Tensor, *, seed: int, round_idx: int, batch_size: int,
                  epochs: int = 1, steps: int | None = None, purpose: int = TRAIN,
                  shuffle: bool = True, streams: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Global row index ``[K, S, B]`` and weights ``[K, S, B]`` of every local step of the given clients.

    ``clients`` index ``arrays``; ``streams`` are the clients' ids for their random streams (default: the
    same numbers; a node holding only some clients' rows passes their federation ids). Clients with
    fewer steps than the longest are padded with all-zero-weight steps (no update).
    """
    per_client = []
    stream_ids = clients.tolist() if streams is None else streams.tolist()
    for cid, stream in zip(clients.tolist(), stream_ids, strict=True):
        n = int(arrays.sizes[cid])
        b = min(batch_size, n)
        rng = client_rng(seed, round_idx, stream, purpose)
        per_client.append([o + int(arrays.offsets[cid]) for o in _client_order(n, steps, epochs, b, rng, shuffle)])
    num_steps = max(len(p) for p in per_client)
    index = torch.zeros(len(per_client), num_steps, batch_size, dtype=torch.long)
    weight = torch.zeros(len(per_client), num_steps, batch_size)
    for k, batches in enumerate(per_client):
        for s, rows in enumerate(batches):
            index[k, s, :len(rows)] = torch.from_numpy(rows)
            weight[k, s, :len(rows)] = 1.0
    return index, weight


def trailing_widths(weight: Tensor) -> list[int]:
    """Per local step, the batch width that keeps every client's real rows (trailing padding cut off).

    ``weight`` is a round's example weights [K, S, B]; a step with no real row in any client gets 0.
    """
    real = (weight > 0).any(dim=0)  # [S, B]: rows real in some client
    return (real.shape[1] - real.flip(1).int().argmax(dim=1)).where(real.any(dim=1), 0).tolist()


def padded_split(arrays: SplitArrays, clients: Tensor) -> tuple[Tensor, Tensor]:
    """All rows of each client, padded to the longest: index ``[K, T]`` and weights ``[K, T]``."""
    sizes = arrays.sizes[clients]
    longest = int(sizes.max()) if len(sizes) else 0
    ar = torch.arange(longest)
    weight = (ar.unsqueeze(0) < sizes.unsqueeze(1)).float()
    index = (arrays.offsets[clients].unsqueeze(1) + ar.unsqueeze(0)) * weight.long()
    return index, weight
