"""What both sides of a Flower run need of one (algorithm, seed): built by the app layer, read here.

The ServerApp uses the algorithm, the run spec and the federation's ``DatasetInfo`` (example counts and
clusters: round driver, summaries), learnt from the nodes; a ClientApp uses the algorithm, the run spec
and its clients' rows (``data``, whose client ``j`` is the federation's client ``ids[j]``). Client rows
and initial client states are built on first use; a server has no rows at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from ..algorithms import Algorithm
from ..data.federated import DatasetInfo, FederatedDataset
from ..engine.batching import SplitArrays
from ..engine.client_work import client_view, initial_client_states
from ..engine.robust import RobustConfig
from ..engine.spec import RunSpec


@dataclass(frozen=True)
class FlowerSettings:
    """The Flower-specific part of a run: where the ServerApp writes, how long it waits, how few replies do."""

    out: str = ""
    min_replies: int = 1
    round_timeout: float = 600.0
    node_wait: float = 120.0
    packed: bool = True  # one packed record per tensor dict to and from bouquet's nodes; False: Flower's layout
    #: each evaluation rides on the next round's train messages (one exchange per round); False: Flower's loop
    fold_evaluation: bool = True


@dataclass(eq=False)
class FlowerJob:
    """One (algorithm, seed) of an experiment on Flower."""

    name: str
    seed: int
    alg: Algorithm
    spec: RunSpec
    info: DatasetInfo
    base_params: int
    robust: RobustConfig | None = None
    settings: FlowerSettings = field(default_factory=FlowerSettings)
    #: extra summary entries (the resolved experiment, for the run directory)
    meta: dict = field(default_factory=dict)
    #: this process's clients' rows (None on a server)
    data: FederatedDataset | None = None
    #: federation ids of ``data.clients`` (None: 0..K-1, the whole federation)
    ids: tuple[int, ...] | None = None

    @property
    def num_clients(self) -> int:
        return self.info.num_clients

    @property
    def local_ids(self) -> tuple[int, ...]:
        """The federation ids of the clients whose rows this process holds."""
        if self.data is None:
            return ()
        return tuple(range(self.data.num_clients)) if self.ids is None else self.ids

    def _rows(self) -> FederatedDataset:
        if self.data is None:
            raise ValueError("bouquet: error: this process holds no client data (a server)")
        return self.data

    @cached_property
    def train(self) -> SplitArrays:
        return SplitArrays.from_dataset(self._rows(), "train")

    @cached_property
    def test(self) -> SplitArrays:
        return SplitArrays.from_dataset(self._rows(), "test")

    @cached_property
    def initial_states(self) -> dict[str, Tensor]:
        return initial_client_states(self.alg, self.seed, self.info.clusters)

    @cached_property
    def initial_global(self) -> dict[str, Tensor]:
        """``alg.broadcast`` of the initial server state: the plain global model of Flower's convention."""
        return self.alg.broadcast(self.alg.init(torch.Generator().manual_seed(self.seed), self.info.clusters)[0])

    def client_rows(self, cid: int) -> tuple[SplitArrays, SplitArrays]:
        """Client ``cid``'s training and test rows, as one-client arrays."""
        ids = self.local_ids
        if cid not in ids:
            raise ValueError(f"bouquet: error: client {cid} is not served here (this node holds clients "
                             f"{list(ids)[:20]})")
        row = ids.index(cid)
        return client_view(self.train, row), client_view(self.test, row)

    def initial_state(self, cid: int) -> dict[str, Tensor]:
        """Client ``cid``'s row of ``alg.init`` (same generator seed as the local engine)."""
        return {k: v[cid].clone() for k, v in self.initial_states.items()}
