"""Conversion between bouquet's tensor dicts and Flower records, and the key layout of messages.

A message carries flat dicts of named tensors (``ArrayRecord``). Several clients can share one
SuperNode, so per-client entries are prefixed ``c<id>/``; nested server state is flattened with
``/`` between levels. Tensors travel as numpy arrays (the dtype is kept; bfloat16 is not supported).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

SEP = "/"


def to_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """A flat dict of tensors as an ``ArrayRecord`` (CPU copies, contiguous, dtype kept)."""
    # np.ascontiguousarray would turn 0-d arrays into 1-d ones
    arrays = {k: Array(np.array(v.detach().cpu().numpy(), order="C", copy=True)) for k, v in tensors.items()}
    return ArrayRecord(array_dict=arrays)


def from_record(record: ArrayRecord) -> dict[str, Tensor]:
    """An ``ArrayRecord`` back as a flat dict of (writable) tensors."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}


def client_prefix(cid: int) -> str:
    return f"c{cid}{SEP}"


def add_client(tensors: Mapping[str, Tensor], cid: int) -> dict[str, Tensor]:
    """Prefix every key with the client id (several clients in one message)."""
    p = client_prefix(cid)
    return {p + k: v for k, v in tensors.items()}


def split_clients(tensors: Mapping[str, Tensor]) -> dict[int, dict[str, Tensor]]:
    """Inverse of ``add_client`` over a whole message: client id -> its unprefixed tensors.

    Keys without a well-formed ``c<id>/`` prefix are collected under client id -1 (rejected later).
    """
    out: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        head, sep, rest = key.partition(SEP)
        cid = int(head[1:]) if sep and head[:1] == "c" and head[1:].isdigit() else -1
        out.setdefault(cid, {})[rest if cid >= 0 else key] = v
    return out


def match_global(incoming: Mapping[str, Tensor], template: Mapping[str, Tensor]) -> dict[str, str]:
    """Template key -> incoming key for a plain global model (Flower's ``arrays``): by name, else in order."""
    if set(incoming) == set(template):
        pairs = {k: k for k in template}
    elif len(incoming) == len(template):
        pairs = dict(zip(template, incoming, strict=True))
    else:
        raise ValueError(f"bouquet: error: arrays: expected the global model {sorted(template)}, got {len(incoming)} "
                         "arrays")
    for k, src in pairs.items():
        if tuple(incoming[src].shape) != tuple(template[k].shape):
            raise ValueError(f"bouquet: error: arrays: {src!r} has shape {tuple(incoming[src].shape)}, the model's "
                             f"{k!r} has {tuple(template[k].shape)}")
    return pairs


def flatten_state(tree: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Nested server state -> (flat tensors, flat non-tensor leaves), keys joined with ``/``."""
    tensors: dict[str, Tensor] = {}
    other: dict[str, Any] = {}
    for k, v in tree.items():
        key = prefix + str(k)
        if isinstance(v, Mapping):
            t, o = flatten_state(v, key + SEP)
            tensors.update(t)
            other.update(o)
            if not v:  # keep empty sub-dicts (e.g. a stateless server optimizer)
                other[key + SEP] = "{}"
        elif isinstance(v, Tensor):
            tensors[key] = v
        else:
            other[key] = v
    return tensors, other


def unflatten_state(tensors: Mapping[str, Tensor], other: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Inverse of ``flatten_state``."""
    root: dict[str, Any] = {}
    items = list(tensors.items()) + list((other or {}).items())
    for key, v in items:
        parts = key.split(SEP)
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if parts[-1] == "" and v == "{}":
            continue
        node[parts[-1]] = v
    return root


def tensor_spec(tensors: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of a flat dict of tensors: what ``validation.upload_problem`` checks against."""
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
