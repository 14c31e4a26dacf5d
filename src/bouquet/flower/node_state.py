"""Where a node keeps its clients' private state (routers, local adaptors, heads) between messages.

Without a state directory it is Flower's ``Context.state`` (kept by the SuperNode for one run). With
``--node-config "state-dir=DIR"`` every client's state is a file, written atomically, one version per round
it trained in: ``DIR/<run>/c<id>-r<round>.ckpt`` (``engine.checkpoint`` format, SHA-256 checked), where
``<run>`` names the (experiment, algorithm, seed). A restarted SuperNode, or a run resumed from a server
checkpoint (a new Flower run), continues from these files: training round ``t`` starts from the newest
version before ``t``, so a round replayed after a server restart starts from the same state as the first
time. Versions older than the newest one at or before the server's last checkpoint are deleted.
"""

from __future__ import annotations

import re
from pathlib import Path

from flwr.app import Context
from torch import Tensor

from ..engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .records import from_record, pack

_FILE = re.compile(r"^c(?P<cid>\d+)-r(?P<round>\d+)\.ckpt$")


class ContextStore:
    """Client states in ``Context.state["c<id>"]`` (the SuperNode's memory of one run): the latest only."""

    def __init__(self, context: Context):
        self.context = context

    def get(self, cid: int, before: int) -> tuple[dict[str, Tensor], int] | None:
        """Client ``cid``'s state (and the round that wrote it) to start round ``before`` from, or None."""
        key = f"c{cid}"
        if key not in self.context.state:
            return None
        return from_record(self.context.state[key]), -1

    def put(self, cid: int, round_idx: int, state: dict[str, Tensor], origin: int, keep_from: int) -> None:
        """Keep client ``cid``'s state after round ``round_idx`` (trained from the version of round ``origin``)."""
        self.context.state[f"c{cid}"] = pack(state)  # one Array per client (from_record reads both layouts)

    def put_server(self, round_idx: int, server: dict) -> None:
        """The server state of the last evaluation (kept only by a state directory, for export)."""


class DirStore:
    """Client states as versioned files under ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def versions(self, cid: int) -> list[int]:
        """Rounds of client ``cid``'s saved versions, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [int(m["round"]) for p in self.dir.iterdir()
                 if (m := _FILE.match(p.name)) and int(m["cid"]) == cid]
        return sorted(found)

    def path(self, cid: int, round_idx: int) -> Path:
        return self.dir / f"c{cid}-r{round_idx:07d}.ckpt"

    def read(self, cid: int, round_idx: int) -> dict:
        """One saved version: ``{"round", "origin", "state"}``."""
        return load_checkpoint(self.path(cid, round_idx))

    def get(self, cid: int, before: int) -> tuple[dict[str, Tensor], int] | None:
        for r in reversed([v for v in self.versions(cid) if v < before]):
            try:
                return dict(self.read(cid, r)["state"]), r
            except CheckpointError:  # a torn or corrupt file: an older version, else the initial state
                continue
        return None

    def put(self, cid: int, round_idx: int, state: dict[str, Tensor], origin: int, keep_from: int) -> None:
        save_checkpoint(self.path(cid, round_idx), {"round": round_idx, "origin": origin,
                                                     "state": {k: v.detach().clone() for k, v in state.items()}})
        older = [v for v in self.versions(cid) if v <= keep_from]
        for r in older[:-1]:  # keep the newest version a resume from the server's checkpoint may start from
            self.path(cid, r).unlink(missing_ok=True)
        for r in self.versions(cid):  # a replayed round made later versions stale
            if r > round_idx:
                self.path(cid, r).unlink(missing_ok=True)


    def put_server(self, round_idx: int, server: dict) -> None:
        """The server state the node last evaluated with (``server.ckpt``): with a client's state, its
        personalized model can be rebuilt on the node (``bouquet.app.flower_export``)."""
        save_checkpoint(self.dir / "server.ckpt", {"round": round_idx, "server": server})

    def server(self) -> dict | None:
        """``put_server``'s last state, or None."""
        path = self.dir / "server.ckpt"
        return load_checkpoint(path) if path.is_file() else None


def store_for(context: Context, run: str) -> ContextStore | DirStore:
    """The node's store: ``state-dir`` of its node config (one subdirectory per run), else the run config's
    ``node-state-dir`` (one subdirectory per partition: simulated nodes), else ``Context.state``."""
    root = context.node_config.get("state-dir")
    if root:
        return DirStore(Path(str(root)) / run)
    shared = context.run_config.get("node-state-dir")
    if shared:
        return DirStore(Path(str(shared)) / f"partition-{context.node_config.get('partition-id', 0)}" / run)
    return ContextStore(context)


def latest_states(directory: str | Path) -> dict[int, dict[str, Tensor]]:
    """Every client's newest saved state in one run's state directory (what ``bouquet export`` reads)."""
    store = DirStore(directory)
    cids = sorted({int(m["cid"]) for p in store.dir.iterdir() if (m := _FILE.match(p.name))}) if store.dir.is_dir() \
        else []
    out = {}
    for cid in cids:
        got = store.get(cid, before=2**62)
        if got is not None:
            out[cid] = got[0]
    return out
