"""Index-pooled clients: a federation whose clients are row indices into one shared pool of features.

``PooledClients`` is the ``clients`` of a ``FederatedDataset`` when many clients share (and resample) few
rows: the pool's features are stored once (``x_pool`` [P, ...]); each split stores, per client row, the
pool row it reads (``rows``) and its own label (``y``: a cluster's label shift is per client). 100,000
clients of 25 rows over a 5,000-row pool cost the pool (16 MB) plus 42 MB of indices and labels, where
copies would cost 100,000 x 25 rows of features. It is a sequence of ``ClientData`` (``clients[k]``
gathers client k's rows, for code that handles one client); the engine's ``SplitArrays`` reads the pool and
the indices directly and gathers features only for the rows of a batch (docs/architecture.md, "Data
layout").
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .client import ClientData, DataError

Rows = Tensor | Sequence[Tensor]


@dataclass(frozen=True, eq=False)
class PooledSplit:
    """One split of every client: row j of client k reads pool row ``rows[offsets[k] + j]``, label ``y[...]``."""

    rows: Tensor
    y: Tensor
    sizes: Tensor

    @property
    def offsets(self) -> Tensor:
        return torch.cumsum(self.sizes, 0) - self.sizes

    @staticmethod
    def of(rows: Rows, y: Rows, split: str) -> PooledSplit:
        """From ``[N, n]`` pool rows and ``[N, n, ...]`` labels, or one 1-D tensor of each per client (ragged)."""
        if isinstance(rows, Tensor):
            if rows.dim() != 2 or not isinstance(y, Tensor) or tuple(y.shape[:2]) != tuple(rows.shape):
                raise DataError(f"pooled clients: {split} rows must be [N, n] and y_{split} [N, n, ...], got "
                                f"{tuple(rows.shape)} and {tuple(getattr(y, 'shape', ()))}")
            sizes = torch.full((rows.shape[0],), rows.shape[1], dtype=torch.long)
            return PooledSplit(rows.reshape(-1).long(), y.reshape(-1, *y.shape[2:]), sizes)
        if len(rows) != len(y) or any(len(r) != len(t) for r, t in zip(rows, y, strict=False)):
            raise DataError(f"pooled clients: {split} rows and y_{split} differ in clients or in rows per client")
        sizes = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return PooledSplit(torch.cat(list(rows)).long(), torch.cat(list(y)), sizes)

    def span(self, k: int) -> slice:
        start = int(self.offsets[k]) if k else 0
        return slice(start, start + int(self.sizes[k]))

    def owner(self, i: int) -> int:
        """The client that owns row ``i`` of the split."""
        return int(torch.searchsorted(torch.cumsum(self.sizes, 0), torch.tensor(i), right=True))


@dataclass(frozen=True, eq=False)
class PooledClients(Sequence[ClientData]):
    """Clients as indices into ``x_pool`` [P, ...]; ``pool_ids`` [P] are the pool rows' source ids
    (disjointness is checked on them), ``cluster`` [N] the true cluster of each client."""

    x_pool: Tensor
    pool_ids: Tensor
    cluster: Tensor
    train: PooledSplit
    test: PooledSplit

    @staticmethod
    def build(x_pool: Tensor, cluster: Tensor, train_rows: Rows, y_train: Rows, test_rows: Rows, y_test: Rows,
              pool_ids: Tensor | None = None) -> PooledClients:
        """Clients from their pool rows and labels per split (``PooledSplit.of``); ids default to pool rows."""
        train, test = PooledSplit.of(train_rows, y_train, "train"), PooledSplit.of(test_rows, y_test, "test")
        ids = torch.arange(len(x_pool)) if pool_ids is None else pool_ids.long()
        cluster = torch.as_tensor(cluster, dtype=torch.long)
        if not len(train.sizes) == len(test.sizes) == len(cluster):
            raise DataError(f"pooled clients: {len(train.sizes)} clients of training rows, {len(test.sizes)} of "
                            f"test rows and {len(cluster)} cluster ids; expected one each per client")
        if len(ids) != len(x_pool):
            raise DataError(f"pooled clients: pool_ids has {len(ids)} entries, expected one per pool row "
                            f"({len(x_pool)})")
        return PooledClients(x_pool, ids, cluster, train, test)

    def split(self, name: str) -> PooledSplit:
        """``train`` or ``test``."""
        return self.train if name == "train" else self.test

    def __len__(self) -> int:
        return len(self.cluster)

    def __getitem__(self, k):
        """Client ``k`` with its rows gathered (a copy of that client's rows only); a slice gives a tuple."""
        if isinstance(k, slice):
            return tuple(self[i] for i in range(*k.indices(len(self))))
        k = operator.index(k)
        k = k + len(self) if k < 0 else k
        if not 0 <= k < len(self):
            raise IndexError(f"client {k} of {len(self)}")
        tr, te = self.train.span(k), self.test.span(k)
        rows_tr, rows_te = self.train.rows[tr], self.test.rows[te]
        return ClientData(self.x_pool[rows_tr], self.train.y[tr], self.x_pool[rows_te], self.test.y[te],
                          int(self.cluster[k]), self.pool_ids[rows_tr], self.pool_ids[rows_te])

    def nbytes(self) -> int:
        """Bytes of every tensor held: the pool once, plus the indices and labels of each client row."""
        tensors = [self.x_pool, self.pool_ids, self.cluster]
        for s in (self.train, self.test):
            tensors += [s.rows, s.y, s.sizes]
        return sum(t.numel() * t.element_size() for t in tensors)

    def check_layout(self, where: str, input_shape: tuple[int, ...], objective: str) -> None:
        """Pool shape, row indices in range, label dtype, and finite features of every row a client reads."""
        if tuple(self.x_pool.shape[1:]) != tuple(input_shape):
            raise DataError(f"{where}: x_pool has shape {tuple(self.x_pool.shape)}, expected "
                            f"[P, {', '.join(map(str, input_shape))}]")
        bad_pool = _nonfinite_rows(self.x_pool)
        for name in ("train", "test"):
            s = self.split(name)
            if len(s.y) != len(s.rows) or int(s.sizes.sum()) != len(s.rows):
                raise DataError(f"{where}: {name} rows, y_{name} and the clients' sizes differ in length")
            if len(s.rows) and (int(s.rows.min()) < 0 or int(s.rows.max()) >= len(self.x_pool)):
                i = int(torch.nonzero((s.rows < 0) | (s.rows >= len(self.x_pool)))[0])
                raise DataError(f"{where}, client {s.owner(i)}: {name} row index {int(s.rows[i])} outside the "
                                f"pool of {len(self.x_pool)} rows")
            if objective in ("classification", "language_modeling") and s.y.dtype != torch.long:
                raise DataError(f"{where}: y_{name} must be int64 labels or token ids, got {s.y.dtype}")
            bad = bad_pool[s.rows]
            if bad.any():
                raise DataError(f"{where}, client {s.owner(int(torch.nonzero(bad)[0]))}: x_{name} has NaN or Inf "
                                f"features")


def _nonfinite_rows(x: Tensor, budget: int = 1 << 24) -> Tensor:
    """[P] bool: pool rows with a NaN or Inf feature (checked in chunks of about ``budget`` elements)."""
    flat = x.reshape(len(x), -1)
    if not flat.is_floating_point():
        return torch.zeros(len(x), dtype=torch.bool)
    step = max(1, budget // max(1, flat.shape[1]))
    return torch.cat([~torch.isfinite(flat[i:i + step]).all(dim=1) for i in range(0, len(flat), step)]
                     or [torch.zeros(0, dtype=torch.bool)])
