"""The federated dataset contract: per-client disjoint train/test tensors and the true cluster id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Objective = Literal["classification", "regression"]


class DataError(ValueError):
    """Raised for missing, corrupt or ill-formed data; the message names the file or field."""


@dataclass(frozen=True)
class ClientData:
    """One client's data. ``*_ids`` are ids of the rows in the source pool, used to prove disjointness.

    Classification labels are int64 of shape ``[n]``; regression targets float32 of shape ``[n, d_out]``.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    cluster: int
    train_ids: Tensor
    test_ids: Tensor

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclass(frozen=True)
class FederatedDataset:
    """A federation: clients (index = client id), the shared input shape and the output size."""

    name: str
    clients: tuple[ClientData, ...]
    input_shape: tuple[int, ...]
    num_outputs: int
    objective: Objective
    num_clusters: int
    meta: dict = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def clusters(self) -> Tensor:
        return torch.tensor([c.cluster for c in self.clients], dtype=torch.long)

    def train_sizes(self) -> Tensor:
        return torch.tensor([c.num_train for c in self.clients], dtype=torch.long)

    def test_sizes(self) -> Tensor:
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

        Vectorised over clients (one pass over concatenated labels and ids, features checked in chunks), so that
        it stays cheap for 10,000 clients; the message names the first offending client.
        """
        if not self.clients:
            raise DataError(f"dataset {self.name!r}: no clients")
        for k, c in enumerate(self.clients):  # metadata only: no pass over the data
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
        for what, sizes in (("training examples", self.train_sizes()), ("test rows", self.test_sizes())):
            empty = torch.nonzero(sizes == 0).flatten().tolist()
            if empty:
                raise DataError(f"dataset {self.name!r}: {_clients(empty)} without {what}; expected at least one "
                                f"per client")
        for split in ("train", "test"):
            self._check_values(split)
        self._check_disjoint()

    def _check_values(self, split: str) -> None:
        """Finite features (in chunks of clients), labels in range or finite targets, for one split."""
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
        y = torch.cat([getattr(c, f"y_{split}") for c in self.clients])
        owner = torch.repeat_interleave(torch.arange(self.num_clients), torch.tensor([len(x) for x in xs]))
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
        train = torch.cat([c.train_ids for c in self.clients])
        test = torch.cat([c.test_ids for c in self.clients])
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
