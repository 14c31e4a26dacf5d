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

    def check(self) -> None:
        """Validate shapes, dtypes, finiteness, label range and train/test disjointness; raise DataError."""
        if not self.clients:
            raise DataError(f"dataset {self.name!r}: no clients")
        seen_train: set[int] = set()
        for k, c in enumerate(self.clients):
            where = f"dataset {self.name!r}, client {k}"
            for split, x, y, ids in (("train", c.x_train, c.y_train, c.train_ids),
                                     ("test", c.x_test, c.y_test, c.test_ids)):
                if tuple(x.shape[1:]) != tuple(self.input_shape):
                    raise DataError(f"{where}: x_{split} has shape {tuple(x.shape)}, "
                                    f"expected [n, {', '.join(map(str, self.input_shape))}]")
                if x.shape[0] != y.shape[0] or x.shape[0] != ids.shape[0]:
                    raise DataError(f"{where}: x_{split}, y_{split} and {split}_ids differ in length")
                if not torch.isfinite(x).all():
                    raise DataError(f"{where}: x_{split} has NaN or Inf features")
                if self.objective == "classification":
                    if y.dtype != torch.long:
                        raise DataError(f"{where}: y_{split} must be int64 class labels, got {y.dtype}")
                    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_outputs):
                        raise DataError(f"{where}: y_{split} has labels outside [0, {self.num_outputs})")
                elif not torch.isfinite(y).all():
                    raise DataError(f"{where}: y_{split} has NaN or Inf targets")
            if c.num_train == 0:
                raise DataError(f"{where}: no training examples")
            train_ids = set(c.train_ids.tolist())
            if train_ids & set(c.test_ids.tolist()):
                raise DataError(f"{where}: train and test splits share rows (ids overlap)")
            seen_train |= train_ids
        seen_test = set(torch.cat([c.test_ids for c in self.clients]).tolist())
        if seen_train & seen_test:
            raise DataError(f"dataset {self.name!r}: a test row of one client is a training row of another "
                            "(train and test ids overlap across clients)")
