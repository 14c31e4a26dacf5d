"""One client's data (``ClientData``), the objective names and the data layer's error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
