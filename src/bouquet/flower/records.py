"""Conversion between bouquet's tensor dicts and Flower records, and the key layout of messages.

A message carries flat dicts of named tensors (``ArrayRecord``). Several clients can share one
SuperNode, so per-client entries are prefixed ``c<id>/``; nested server state is flattened with
``/`` between levels.

Two layouts. Flower's plain one (``to_record``): one ``Array`` per tensor, as numpy arrays (bfloat16 is not
supported); Flower's stock strategies and ClientApps read and write it, so bouquet uses it with them. The packed
one (``pack``), between bouquet's own ServerApp and ClientApp: ONE ``Array`` under the key ``bouquet.packed``
(``stype`` ``bouquet.packed``, dtype uint8) whose bytes are an index and every tensor's bytes, in the layout of
a safetensors file: an 8-byte little-endian header length, a JSON header ``{"format": "bouquet.packed/1",
"tensors": [[name, dtype, shape, offset, nbytes], ...]}``, then the concatenated tensor bytes (offsets count
from the end of the header). Flower 1.42 moves every record, ``Array`` and 5 MB ``ArrayChunk`` of a message as
its own object, one HTTP request per object and hop. Packed bytes up to ``INLINE_LIMIT`` travel as the one
bytes value of a ``ConfigRecord`` (a record with no children: 1 object for the whole dict of n tensors, against
1 + 2n plain); larger ones as one ``Array`` in an ``ArrayRecord`` (3 objects and a chunk per 5 MB), which
Flower streams in chunks. The index sits in the packed bytes because that costs no object.
``from_record`` reads every layout.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from torch import Tensor

SEP = "/"
#: the one key and the ``stype`` of a packed record's ``Array``
PACKED = "bouquet.packed"
FORMAT = "bouquet.packed/1"
#: prefix of a train message's entries that carry the previous round's evaluation (``fold-evaluation``): the
#: flattened server state's tensors in ``arrays`` and its other values in ``config``; the scores in the reply's
#: ``metrics``. Inside the existing records, so folding adds no object to a message.
EVAL = "eval:"
#: packed bytes up to this size travel inline in a ConfigRecord (one object); larger ones as a chunked Array
INLINE_LIMIT = 4 << 20
#: a record that carries tensors: Flower's ArrayRecord, or a ConfigRecord holding inline packed bytes
TensorRecord = ArrayRecord | ConfigRecord
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128, torch.uint8,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)}


def to_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """A flat dict of tensors as an ``ArrayRecord`` (CPU copies, contiguous, dtype kept)."""
    # np.ascontiguousarray would turn 0-d arrays into 1-d ones
    arrays = {k: Array(np.array(v.detach().cpu().numpy(), order="C", copy=True)) for k, v in tensors.items()}
    return ArrayRecord(array_dict=arrays)


def pack(tensors: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> TensorRecord:
    """A flat dict of tensors as one packed record (an index and all tensors' bytes: inline in a ``ConfigRecord``
    up to ``INLINE_LIMIT``, else one ``Array``); ``meta`` (JSON values: a message's config or metrics) rides in
    the index, so it costs no record of its own."""
    return pack_many(tensors, [meta])[0]


def pack_many(tensors: Mapping[str, Tensor], metas: list[Mapping[str, Any] | None]) -> list[TensorRecord]:
    """``[pack(tensors, m) for m in metas]``, the tensors' bytes gathered once (one message per node)."""
    index, parts, offset = [], [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        kind = str(t.dtype).removeprefix("torch.")
        if kind not in _DTYPES:
            raise ValueError(f"bouquet: error: {name!r}: dtype {kind} cannot travel in a packed record")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        index.append([name, kind, list(t.shape), offset, len(raw)])
        parts.append(raw)
        offset += len(raw)
    body = b"".join(parts)
    out = []
    for meta in metas:
        head: dict[str, Any] = {"format": FORMAT, "tensors": index}
        if meta is not None:
            head["meta"] = dict(meta)
        header = json.dumps(head, separators=(",", ":")).encode()
        data = b"".join([struct.pack("<Q", len(header)), header, body])
        out.append(_packed_record(data))
    return out


def _packed_record(data: bytes) -> TensorRecord:
    if len(data) <= INLINE_LIMIT:
        return ConfigRecord({PACKED: data})
    return ArrayRecord(array_dict={PACKED: Array(dtype="uint8", shape=(len(data),), stype=PACKED, data=data)})


def _packed_bytes(record: TensorRecord) -> bytes:
    return record[PACKED] if isinstance(record, ConfigRecord) else record[PACKED].data


def to_wire(tensors: Mapping[str, Tensor], packed: bool) -> TensorRecord:
    """``tensors`` in the packed layout (``pack``) or Flower's plain one (``to_record``)."""
    return pack(tensors) if packed else to_record(tensors)


def packed_meta(record: TensorRecord, key: str = "arrays") -> dict[str, Any]:
    """The ``meta`` a packed record carries ({} when none); ValueError (naming ``key``) on a malformed one."""
    try:
        header = _header(_packed_bytes(record))[0]
    except ValueError as err:
        raise ValueError(f"bouquet: error: {key!r}: malformed packed record ({PACKED}): {err}") from None
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"bouquet: error: {key!r}: malformed packed record ({PACKED}): meta is not a JSON object")
    return meta


def content_values(content, name: str) -> dict[str, Any]:
    """A message's ``name`` record ("config" or "metrics") as a dict: the record when the message has one, else
    the ``meta`` of its packed ``arrays`` (bouquet's own messages carry them there), else {}."""
    if name in content:
        return dict(content[name])
    arrays = content.get("arrays") if "arrays" in content else None
    if arrays is not None and is_packed(arrays):
        return packed_meta(arrays)
    return {}


#: the key of a shared config that names its per-node entries (``shared_config``)
BY_NODE = "by-node"
#: per-node values (client ids) up to which one config is shared by all nodes of a round
SHARED_LIMIT = 4096


def shared_config(configs: Mapping[int, Mapping[str, Any]], limit: int = SHARED_LIMIT) -> dict[str, Any] | None:
    """One config for every node of ``configs`` (node id -> config): the entries they agree on as they are, each
    other entry as ``{"<node id>": value}``, listed under ``BY_NODE``. Identical message contents are one object
    for Flower, pushed to the SuperLink once for all nodes. None when a per-node entry is missing on some node,
    or the per-node values hold more than ``limit`` items (every node would download them all)."""
    keys = {k for c in configs.values() for k in c}
    first = next(iter(configs.values()))
    out: dict[str, Any] = {}
    per_node, items = [], 0
    for key in sorted(keys):
        if any(key not in c for c in configs.values()):
            return None
        if all(c[key] == first[key] for c in configs.values()):
            out[key] = first[key]
            continue
        out[key] = {str(node): c[key] for node, c in configs.items()}
        per_node.append(key)
        items += sum(len(v) if isinstance(v, list | tuple) else 1 for v in out[key].values())
    if items > limit or BY_NODE in keys:
        return None
    if per_node:
        out[BY_NODE] = per_node
    return out


def for_node(config: Mapping[str, Any], node_id: int) -> dict[str, Any]:
    """A node's view of a (possibly shared) config: each entry listed under ``BY_NODE`` replaced by the node's
    own value. A node the entry does not name gets an empty list (it serves none of those clients)."""
    out = dict(config)
    for key in out.pop(BY_NODE, []):
        out[key] = out[key].get(str(node_id), [])
    return out


def is_packed(record: Any) -> bool:
    """Whether ``record`` is in the packed layout (``pack``: inline in a ConfigRecord, or one Array)."""
    if isinstance(record, ConfigRecord):
        return len(record) == 1 and isinstance(record.get(PACKED), bytes)
    return isinstance(record, ArrayRecord) and len(record) == 1 and PACKED in record and record[PACKED].stype == PACKED


def _entries(data: bytes) -> tuple[list, int]:
    """The packed index and where the tensor bytes start; ValueError (the reason) on a malformed one."""
    header, start = _header(data)
    return header["tensors"], start


def _header(data: bytes) -> tuple[dict, int]:
    """The packed header and where the tensor bytes start; ValueError (the reason) on a malformed one."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than the 8-byte header length")
    (size,) = struct.unpack_from("<Q", data)
    if size > len(data) - 8:
        raise ValueError(f"header of {size} bytes in a {len(data)}-byte array")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"header is not JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("tensors"), list):
        raise ValueError(f"header is not a {FORMAT} index")
    return header, 8 + size


def unpack(record: TensorRecord, key: str = "arrays") -> dict[str, Tensor]:
    """A packed record back as a flat dict of (writable) tensors; ``key``: its name in the message, for the
    error a malformed record raises."""
    data = _packed_bytes(record)
    try:
        entries, start = _entries(data)
        body = torch.frombuffer(bytearray(data[start:]), dtype=torch.uint8) if len(data) > start else torch.empty(
            0, dtype=torch.uint8)
        out: dict[str, Tensor] = {}
        for entry in entries:
            name, kind, shape, offset, nbytes = _entry(entry)
            if name in out:
                raise ValueError(f"tensor {name!r} twice")
            dtype = _DTYPES[kind]
            if nbytes != math.prod(shape) * dtype.itemsize or offset + nbytes > body.numel():
                raise ValueError(f"tensor {name!r}: {nbytes} bytes at {offset} do not fit {kind} {shape} in "
                                 f"{body.numel()} bytes")
            raw = body[offset:offset + nbytes].clone()
            if dtype is torch.bool and bool((raw > 1).any()):
                raise ValueError(f"tensor {name!r}: bool bytes other than 0 and 1")
            out[name] = raw.view(dtype).reshape(shape)
    except ValueError as err:
        raise ValueError(f"bouquet: error: {key!r}: malformed packed record ({PACKED}): {err}") from None
    return out


def _entry(entry: Any) -> tuple[str, str, list[int], int, int]:
    """One index entry, checked: (name, dtype, shape, offset, nbytes)."""
    ok = (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str) and entry[1] in _DTYPES
          and isinstance(entry[2], list) and all(type(d) is int and d >= 0 for d in entry[2])
          and all(type(v) is int and v >= 0 for v in entry[3:]))
    if not ok:
        raise ValueError(f"bad index entry {str(entry)[:80]}")
    return entry[0], entry[1], entry[2], entry[3], entry[4]


def from_record(record: TensorRecord, key: str = "arrays") -> dict[str, Tensor]:
    """A record in any layout (plain or ``pack``) back as a flat dict of (writable) tensors; ValueError naming
    ``key`` for a record that holds no tensors."""
    if is_packed(record):
        return unpack(record, key)
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"bouquet: error: {key!r}: expected an ArrayRecord or a packed record ({PACKED}), got "
                         f"a {type(record).__name__} with keys {sorted(record)[:5]}")
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
