"""The ClientApp side: a SuperNode trains and evaluates the clients (partitions) it serves.

Messages name the clients they are for (``config["clients"]``), so one SuperNode can serve several
partitions. A message without ``clients`` follows Flower's convention (stock ``FedAvg``): ``arrays`` is the
plain global model and the node trains its partition as one client (FedAvg-family methods only). Each
client's private state (router, local adaptor, head...) lives in ``Context.state`` under ``c<id>``, or in the
node's state directory (``node_state``), and never leaves the node; replies carry only the algorithm's upload.
The work itself is ``engine.client_work``: the simulator's client loop, one client at a time.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from ..data.federated import FederatedDataset
from ..engine.client_work import evaluate_client, is_finite_update, train_client
from .discovery import query_content
from .job import FlowerJob
from .node_state import ContextStore, DirStore
from .records import (
    EVAL,
    add_client,
    content_values,
    for_node,
    from_record,
    is_packed,
    match_global,
    pack,
    to_record,
    unflatten_state,
)

Store = ContextStore | DirStore


def partition(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) of this node."""
    nc = context.node_config
    return int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1))


def _private(store: Store, job: FlowerJob, cid: int, before: int) -> tuple[dict[str, torch.Tensor], int]:
    """Client ``cid``'s private state to start round ``before`` from, and the round that wrote it (0: initial)."""
    got = store.get(cid, before)
    return got if got is not None else (job.initial_state(cid), 0)


def describe(data: FederatedDataset) -> dict:
    """The shape of a node's data, as the query reply tells the server (JSON)."""
    return {"name": data.name, "input_shape": list(data.input_shape), "num_outputs": data.num_outputs,
            "objective": data.objective, "num_clusters": data.num_clusters,
            "target_shape": list(data.clients[0].y_train.shape[1:])}


def query_reply(msg: Message, context: Context, data: FederatedDataset, ids: tuple[int, ...] | None = None,
                part: tuple[int, int] | None = None) -> Message:
    """Which clients this node serves, their sizes and clusters, and the shape of its data: the server maps
    clients to nodes and describes the federation with it. ``ids``: federation ids of ``data.clients`` (a node
    directory); None: ``data`` is the whole federation and the node serves the ids ``k`` with ``k mod N == i``."""
    pid, num = partition(context) if part is None else part
    if ids is None:
        ids = tuple(range(data.num_clients))
        served = [(k, data.clients[k]) for k in ids if k % num == pid]
    else:
        served = list(zip(ids, data.clients, strict=True))
    clients = {cid: (c.num_train, c.num_test, c.cluster) for cid, c in served}
    return Message(query_content(pid, num, clients, describe(data)), reply_to=msg)


def _stock(msg: Message, context: Context, job: FlowerJob) -> tuple[int, dict[str, torch.Tensor], dict[str, str]]:
    """A Flower-convention message: (this node's client id, the payload, payload key -> message key)."""
    ids = job.local_ids
    cid = ids[0] if job.ids is not None and len(ids) == 1 else partition(context)[0]
    if not 0 <= cid < job.num_clients:
        raise ValueError(f"bouquet: error: partition-id {cid} is not a client of the experiment "
                         f"({job.num_clients} clients)")
    incoming = from_record(msg.content["arrays"])
    names = match_global(incoming, job.initial_global)
    return cid, {k: incoming[src] for k, src in names.items()}, names


def _train_one(store: Store, job: FlowerJob, cid: int, payload: dict[str, torch.Tensor],
               rnd: int, keep_from: int) -> tuple[dict[str, torch.Tensor], float, int]:
    """Client ``cid``'s round: (upload, loss, n_k); its new private state is kept only for a finite update,
    as the simulator keeps a rejected client's old state."""
    private, origin = _private(store, job, cid, rnd)
    upload, new_private, loss, n = train_client(job.alg, job.spec, job.seed, job.client_rows(cid)[0], cid, payload,
                                                private, rnd)
    if is_finite_update(upload, loss):
        store.put(cid, rnd, new_private, origin, keep_from)
    return upload, loss, n


def _stock_train(msg: Message, context: Context, job: FlowerJob, store: Store) -> Message:
    cid, payload, names = _stock(msg, context, job)
    rnd = int(msg.content["config"]["server-round"])
    upload, loss, n = _train_one(store, job, cid, payload, rnd, rnd - 1)
    if set(upload) != set(names):
        raise ValueError(f"bouquet: error: {job.name} does not upload the global model; Flower's stock strategies "
                         "work with the FedAvg-family methods only")
    arrays = to_record({names[k]: upload[k] for k in names})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"train_loss": loss, "num-examples": n})}),
                   reply_to=msg)


def train_reply(msg: Message, context: Context, job: FlowerJob, store: Store | None = None) -> Message:
    """Local training of every client named in the message; uploads prefixed ``c<id>/``. Private states
    live in ``store`` (default: ``Context.state``)."""
    store = ContextStore(context) if store is None else store
    cfg = for_node(content_values(msg.content, "config"), context.node_id)
    if "clients" not in cfg:
        return _stock_train(msg, context, job, store)
    incoming = from_record(msg.content["arrays"])
    payload = {k: v for k, v in incoming.items() if not k.startswith(EVAL)}
    packed = is_packed(msg.content["arrays"])  # reply in the layout the server sent
    metrics: dict[str, float | int] = {}
    if EVAL + "round" in cfg:  # the previous round's evaluation first (its states: the versions before this round)
        other = EVAL + "server/"  # the server state's values that are not tensors
        server = unflatten_state({k[len(EVAL):]: v for k, v in incoming.items() if k.startswith(EVAL)},
                                 {k[len(other):]: v for k, v in cfg.items() if k.startswith(other)})
        scores = _evaluate_clients(store, job, server, int(cfg[EVAL + "round"]), list(cfg[EVAL + "clients"]))
        metrics.update({EVAL + k: v for k, v in scores.items()})
    rnd = int(cfg["server-round"])
    keep_from = int(cfg.get("checkpoint-round", rnd - 1))
    uploads: dict[str, torch.Tensor] = {}
    total = 0
    for cid in list(cfg["clients"]):
        upload, loss, n = _train_one(store, job, cid, payload, rnd, keep_from)
        uploads.update(add_client(upload, cid))
        metrics[f"c{cid}/loss"] = loss
        metrics[f"c{cid}/num-examples"] = n
        total += n
    metrics["num-examples"] = total
    if packed:  # the metrics ride in the packed record's index: one object less per reply
        return Message(RecordDict({"arrays": pack(uploads, metrics)}), reply_to=msg)
    return Message(RecordDict({"arrays": to_record(uploads), "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate_reply(msg: Message, context: Context, job: FlowerJob, store: Store | None = None) -> Message:
    """Every named client's personalized model on its own test split."""
    store = ContextStore(context) if store is None else store
    cfg = for_node(content_values(msg.content, "config"), context.node_id)
    if "clients" not in cfg:  # Flower's convention: the plain global model, this node's partition
        cid, payload, _ = _stock(msg, context, job)
        train, test = job.client_rows(cid)
        rnd = int(cfg["server-round"])
        score, loss, n = evaluate_client(job.alg, job.spec, job.seed, train, test, {"params": payload},
                                         _private(store, job, cid, rnd + 1)[0], cid, rnd)
        return Message(RecordDict({"metrics": MetricRecord({"eval_loss": loss, "eval_score": score,
                                                            "num-examples": n})}), reply_to=msg)
    other = msg.content.get("server")
    server = unflatten_state(from_record(msg.content["arrays"]), dict(other) if isinstance(other, ConfigRecord) else {})
    scores = _evaluate_clients(store, job, server, int(cfg["server-round"]), list(cfg["clients"]))
    return Message(RecordDict({"metrics": MetricRecord(scores)}), reply_to=msg)


def _evaluate_clients(store: Store, job: FlowerJob, server: dict, rnd: int,
                      clients: list[int]) -> dict[str, float | int]:
    """``c<id>/score``, ``/loss`` and ``/num-examples`` of each client's personalized model after round ``rnd``
    (the server state is kept for ``bouquet export``)."""
    store.put_server(rnd, server)
    metrics: dict[str, float | int] = {}
    for cid in clients:
        train, test = job.client_rows(cid)
        score, loss, n = evaluate_client(job.alg, job.spec, job.seed, train, test, server,
                                         _private(store, job, cid, rnd + 1)[0], cid, rnd)
        metrics[f"c{cid}/score"] = score
        metrics[f"c{cid}/loss"] = loss
        metrics[f"c{cid}/num-examples"] = n
    return metrics
