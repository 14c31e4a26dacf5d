"""The federated dataset contract: per-client disjoint train/test tensors and the true cluster id."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .client import ClientData, DataError, Objective
from .pooled import PooledClients

__all__ = ["ClientData", "DataError", "DatasetInfo", "FederatedDataset", "Objective", "PooledClients"]


@dataclass(frozen=True)
class FederatedDataset:
    """A federation: clients (index = client id), the shared input shape and the output size.

    ``clients`` is a tuple of ``ClientData`` (each client's own tensors) or ``PooledClients`` (row indices
    into one shared pool, for many clients resampling few rows); both read alike, client by client.
    """

    name: str
    clients: tuple[ClientData, ...] | PooledClients
    input_shape: tuple[int, ...]
    num_outputs: int
    objective: Objective
    num_clusters: int
    meta: dict = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def pooled(self) -> PooledClients | None:
        """The clients as a ``PooledClients`` when they are index-pooled, else None."""
        return self.clients if isinstance(self.clients, PooledClients) else None

    @property
    def clusters(self) -> Tensor:
        if self.pooled is not None:
            return self.pooled.cluster.clone()
        return torch.tensor([c.cluster for c in self.clients], dtype=torch.long)

    def train_sizes(self) -> Tensor:
        if self.pooled is not None:
            return self.pooled.train.sizes.clone()
        return torch.tensor([c.num_train for c in self.clients], dtype=torch.long)

    def test_sizes(self) -> Tensor:
        if self.pooled is not None:
            return self.pooled.test.sizes.clone()
        return torch.tensor([c.num_test for c in self.clients], dtype=torch.long)

    def total_train_examples(self) -> int:
        return int(self.train_sizes().sum())

    def info(self) -> DatasetInfo:
        """What a server needs of this federation: shapes, sizes and clusters, no rows."""
        target = tuple(self.clients[0].y_train.shape[1:]) if self.clients else ()
        return DatasetInfo(self.name, tuple(self.input_shape), self.num_outputs, self.objective, self.num_clusters,
                           self.train_sizes(), self.test_sizes(), self.clusters, target)

    def check(self) -> None:
        """Validate shapes, dtypes, finiteness, label range, split sizes and train/test disjointness; raise DataError.

        Vectorised over clients (one pass over concatenated labels and ids, features checked in chunks; pooled
        clients' features once per pool row), so that it stays cheap for 100,000 clients; the message names the
        first offending client.
        """
        if not self.clients:
            raise DataError(f"dataset {self.name!r}: no clients")
        if self.pooled is not None:
            self.pooled.check_layout(f"dataset {self.name!r}", tuple(self.input_shape), self.objective)
        else:
            self._check_layout()
        for what, sizes in (("training examples", self.train_sizes()), ("test rows", self.test_sizes())):
            empty = torch.nonzero(sizes == 0).flatten().tolist()
            if empty:
                raise DataError(f"dataset {self.name!r}: {_clients(empty)} without {what}; expected at least one "
                                f"per client")
        for split in ("train", "test"):
            if self.pooled is None:
                self._check_features(split)
            self._check_labels(split)
        self._check_disjoint()

    def _check_layout(self) -> None:
        """Shapes and dtypes of every client's tensors (metadata only: no pass over the data)."""
        for k, c in enumerate(self.clients):
            where = f"dataset {self.name!r}, client {k}"
            for split, x, y, ids in (("train", c.x_train, c.y_train, c.train_ids),
                                     ("test", c.x_test, c.y_test, c.test_ids)):
                if tuple(x.shape[1:]) != tuple(self.input_shape):
                    raise DataError(f"{where}: x_{split} has shape {tuple(x.shape)}, "
                                    f"expected [n, {', '.join(map(str, self.input_shape))}]")
                if x.shape[0] != y.shape[0] or x.shape[0] != ids.shape[0]:
                    raise DataError(f"{where}: x_{split}, y_{split} and {split}_ids differ in length")
                if self.objective in ("classification", "language_modeling") and y.dtype != torch.long:
                    raise DataError(f"{where}: y_{split} must be int64 labels or token ids, got {y.dtype}")

    def _flat(self, split: str) -> tuple[Tensor, Tensor]:
        """Labels and source ids of every row of ``split``, clients concatenated in order."""
        if self.pooled is not None:
            s = self.pooled.split(split)
            return s.y, self.pooled.pool_ids[s.rows]
        return (torch.cat([getattr(c, f"y_{split}") for c in self.clients]),
                torch.cat([getattr(c, f"{split}_ids") for c in self.clients]))

    def _check_features(self, split: str) -> None:
        """Finite features of one split, in chunks of clients."""
        xs = [getattr(c, f"x_{split}") for c in self.clients]
        start, budget = 0, 1 << 24  # elements per chunk
        while start < len(xs):
            stop, n = start, 0
            while stop < len(xs) and (stop == start or n + xs[stop].numel() <= budget):
                n += xs[stop].numel()
                stop += 1
            if not torch.isfinite(torch.cat([x.flatten() for x in xs[start:stop]])).all():
                k = next(i for i in range(start, stop) if not torch.isfinite(xs[i]).all())
                raise DataError(f"dataset {self.name!r}, client {k}: x_{split} has NaN or Inf features")
            start = stop

    def _check_labels(self, split: str) -> None:
        """Labels in range (classification, token ids) or finite targets (regression), for one split."""
        y = self._flat(split)[0]
        sizes = self.train_sizes() if split == "train" else self.test_sizes()
        owner = torch.repeat_interleave(torch.arange(self.num_clients), sizes)
        if self.objective in ("classification", "language_modeling"):
            bad = (y < 0) | (y >= self.num_outputs)
            if self.objective == "language_modeling":  # -100: a padded target position
                bad = bad & (y != -100)
                owner = owner.view(-1, *([1] * (y.dim() - 1))).expand_as(y).flatten()
                bad = bad.flatten()
                y = y.flatten()
            if bad.any():
                i = int(torch.nonzero(bad)[0])
                raise DataError(f"dataset {self.name!r}, client {int(owner[i])}: y_{split} has labels outside "
                                f"[0, {self.num_outputs}) (label {int(y[i])}; num_outputs is {self.num_outputs})")
        else:
            bad = ~torch.isfinite(y.reshape(len(y), -1)).all(dim=1)
            if bad.any():
                raise DataError(f"dataset {self.name!r}, client {int(owner[torch.nonzero(bad)[0]])}: y_{split} "
                                f"has NaN or Inf targets")

    def _check_disjoint(self) -> None:
        """No test row of any client is a training row (of the same client or of another)."""
        train, test = self._flat("train")[1], self._flat("test")[1]
        leak = torch.isin(test, train)
        if not leak.any():
            return
        sizes = self.test_sizes()
        i = int(torch.nonzero(leak)[0])
        k = int(torch.searchsorted(torch.cumsum(sizes, 0), torch.tensor(i), right=True))
        if bool(torch.isin(test[i], self.clients[k].train_ids)):
            raise DataError(f"dataset {self.name!r}, client {k}: train and test splits share rows (ids overlap)")
        raise DataError(f"dataset {self.name!r}: a test row of one client is a training row of another "
                        "(train and test ids overlap across clients)")


@dataclass(frozen=True)
class DatasetInfo:
    """A federation without its rows: what a Flower server learns from the nodes' replies (docs/flower.md).

    Has the attributes of ``FederatedDataset`` that building a model and an algorithm reads (``input_shape``,
    ``num_outputs``, ``objective``, ``num_clusters``, ``train_sizes()``), so the server never needs data.
    """

    name: str
    input_shape: tuple[int, ...]
    num_outputs: int
    objective: Objective
    num_clusters: int
    train_counts: Tensor
    test_counts: Tensor
    cluster_ids: Tensor
    target_shape: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)
    #: the federation's training examples when ``train_counts`` holds only some clients' (a node's view)
    total_train: int | None = None

    @property
    def num_clients(self) -> int:
        return len(self.train_counts)

    @property
    def clusters(self) -> Tensor:
        return self.cluster_ids

    def train_sizes(self) -> Tensor:
        return self.train_counts

    def test_sizes(self) -> Tensor:
        return self.test_counts

    def total_train_examples(self) -> int:
        return int(self.train_counts.sum()) if self.total_train is None else self.total_train

    def info(self) -> DatasetInfo:
        return self


def _clients(ids: list[int]) -> str:
    """``client 3`` or ``3 clients (0, 1, 2, ...)`` for messages."""
    if len(ids) == 1:
        return f"client {ids[0]} is"
    shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
    return f"{len(ids)} clients ({shown}) are"
