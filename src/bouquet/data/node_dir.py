"""A node's own data directory: the clients one Flower SuperNode serves, read from files (docs/flower.md).

Layout of a node directory (what ``bouquet partition`` writes; users may write it themselves)::

    bouquet-node.json   {"format": 1, "dataset": NAME, "objective": "classification" | "regression",
                         "num_outputs": 10, "num_clusters": 2, "num_clients": K, "partition_id": i,
                         "num_partitions": N, "clients": {"3": {"file": "client-3.npz", "cluster": 1}, ...}}
    client-<id>.npz     arrays x_train, y_train, x_test, y_test (or client-<id>.pt: a dict of tensors, torch.save)

Client ids are the federation's (0..K-1); ``num_clients``, ``partition_id``, ``num_partitions`` and ``cluster``
are optional (a node that does not know K serves its clients under their ids). Features are float32
``[n, *input_shape]``; labels int64 ``[n]`` (classification) or float32 targets ``[n, d]`` (regression).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write_bytes, atomic_write_json
from .federated import ClientData, DataError, FederatedDataset

META = "bouquet-node.json"
FORMAT = 1
SPLITS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class NodeData:
    """The clients of one node directory: ``data.clients[j]`` is the federation's client ``ids[j]``."""

    data: FederatedDataset
    ids: tuple[int, ...]
    #: the federation's client count K when the directory states it, else None
    num_clients: int | None
    #: (partition id, number of partitions) when the directory states them, else None
    partition: tuple[int, int] | None


def write_node_dirs(data: FederatedDataset, out: str | Path, nodes: int, fmt: str = "npz") -> list[Path]:
    """Write ``data`` as ``nodes`` node directories ``out/node-<i>`` (client k on node k mod nodes), atomically."""
    if not 1 <= nodes <= data.num_clients:
        raise DataError(f"--nodes: expected 1..{data.num_clients} (the dataset's clients), got {nodes}")
    if fmt not in ("npz", "pt"):
        raise DataError(f"--format: expected npz or pt, got {fmt!r}")
    dirs = []
    for i in range(nodes):
        d = Path(out) / f"node-{i}"
        clients = {}
        for k in range(i, data.num_clients, nodes):
            c = data.clients[k]
            name = f"client-{k}.{fmt}"
            atomic_write_bytes(d / name, _encode({s: getattr(c, s) for s in SPLITS}, fmt))
            clients[str(k)] = {"file": name, "cluster": int(c.cluster)}
        atomic_write_json(d / META, {"format": FORMAT, "dataset": data.name, "objective": data.objective,
                                     "num_outputs": data.num_outputs, "num_clusters": data.num_clusters,
                                     "num_clients": data.num_clients, "partition_id": i, "num_partitions": nodes,
                                     "clients": clients})
        dirs.append(d)
    return dirs


def _encode(tensors: dict[str, Tensor], fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "npz":
        np.savez(buf, **{k: v.numpy() for k, v in tensors.items()})
    else:
        torch.save({k: v.contiguous() for k, v in tensors.items()}, buf)
    return buf.getvalue()


def _read(path: Path) -> dict[str, Tensor]:
    """The four splits of one client file (.npz or .pt); a missing or unreadable one is a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: client file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        elif path.suffix == ".pt":
            arrays = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"{path}: expected a .npz or .pt client file")
    except (OSError, ValueError, RuntimeError) as err:
        raise DataError(f"{path}: not a readable client file ({err})") from None
    missing = [k for k in SPLITS if k not in arrays]
    if missing or not all(isinstance(arrays[k], Tensor) for k in SPLITS):
        raise DataError(f"{path}: expected arrays {', '.join(SPLITS)}; missing {', '.join(missing) or 'tensors'}")
    return arrays


def _meta(directory: Path) -> dict:
    path = directory / META
    if not path.is_file():
        raise DataError(f"data-dir: {directory} has no {META} (see docs/flower.md, 'Node-local data')")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: format: expected {FORMAT}, got {meta.get('format')!r}")
    for key in ("objective", "num_outputs", "clients"):
        if key not in meta:
            raise DataError(f"{path}: {key}: missing")
    if meta["objective"] not in ("classification", "regression"):
        raise DataError(f"{path}: objective: expected classification or regression, got {meta['objective']!r}")
    if not isinstance(meta["clients"], dict) or not meta["clients"]:
        raise DataError(f"{path}: clients: expected a non-empty table of client id -> file")
    return meta


def load_node_dir(directory: str | Path) -> NodeData:
    """The clients of a node directory, checked like any dataset (shapes, labels, finiteness)."""
    d = Path(directory)
    meta = _meta(d)
    ids, rows = [], []
    for key in sorted(meta["clients"], key=lambda k: int(k) if str(k).isdigit() else -1):
        if not str(key).isdigit():
            raise DataError(f"{d / META}: clients: {key!r} is not a client id (expected 0, 1, ...)")
        entry = meta["clients"][key]
        a = _read(d / str(entry.get("file", f"client-{key}.npz")))
        y_dtype = torch.long if meta["objective"] == "classification" else torch.float32
        rows.append((a["x_train"].to(torch.float32), a["y_train"].to(y_dtype), a["x_test"].to(torch.float32),
                     a["y_test"].to(y_dtype), int(entry.get("cluster", 0))))
        ids.append(int(key))
    clients = _numbered(rows)
    k = meta.get("num_clients")
    if k is not None and max(ids) >= int(k):
        raise DataError(f"{d / META}: client {max(ids)} is not below num_clients {k}")
    data = FederatedDataset(str(meta.get("dataset", d.name)), tuple(clients), tuple(clients[0].x_train.shape[1:]),
                            int(meta["num_outputs"]), meta["objective"], int(meta.get("num_clusters", 1)),
                            meta={"node_dir": str(d)})
    data.check()
    part = None
    if "partition_id" in meta and "num_partitions" in meta:
        part = (int(meta["partition_id"]), int(meta["num_partitions"]))
    return NodeData(data, tuple(ids), None if k is None else int(k), part)


def load_federation(directories: list[str | Path]) -> FederatedDataset:
    """Node directories joined back into one federation, clients in id order (the local engine's view of them)."""
    nodes = [load_node_dir(d) for d in directories]
    pairs = sorted((cid, c) for n in nodes for cid, c in zip(n.ids, n.data.clients, strict=True))
    ids = [cid for cid, _ in pairs]
    if ids != list(range(len(ids))):
        raise DataError(f"node directories: client ids {ids[:20]} are not 0..{len(ids) - 1} (each exactly once)")
    first = nodes[0].data
    clients = _numbered([(c.x_train, c.y_train, c.x_test, c.y_test, c.cluster) for _, c in pairs])
    return FederatedDataset(first.name, tuple(clients), first.input_shape, first.num_outputs, first.objective,
                            first.num_clusters)


def _numbered(rows: list[tuple[Tensor, Tensor, Tensor, Tensor, int]]) -> list[ClientData]:
    """Clients whose row ids number all their rows in order (train then test, client after client)."""
    out, offset = [], 0
    for x_tr, y_tr, x_te, y_te, cluster in rows:
        n_tr, n_te = len(x_tr), len(x_te)
        out.append(ClientData(x_tr, y_tr, x_te, y_te, cluster, torch.arange(offset, offset + n_tr),
                              torch.arange(offset + n_tr, offset + n_tr + n_te)))
        offset += n_tr + n_te
    return out
