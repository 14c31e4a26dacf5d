"""The bouquet ``ClientApp``: a SuperNode trains and evaluates the clients (partitions) it serves.

Messages name the clients they are for (``config["clients"]``), so one SuperNode can serve several
partitions. Each client's private state (router, local adaptor, head...) lives in ``Context.state``
under ``c<id>`` and never leaves the node; replies carry only the algorithm's upload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

if TYPE_CHECKING:
    import torch

# torch and bouquet are imported inside the train/evaluate handlers: in the deployment runtime
# every message starts a fresh process, and the discovery query needs neither.

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    nc = context.node_config
    return int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1))


def _private(context: Context, task, cid: int) -> dict[str, torch.Tensor]:
    from .client import initial_client_state
    from .records import from_record

    key = f"c{cid}"
    if key in context.state:
        return from_record(context.state[key])
    return initial_client_state(task, cid)


def _store(context: Context, cid: int, private: dict[str, torch.Tensor]) -> None:
    from .records import to_record

    context.state[f"c{cid}"] = to_record(private)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which partition this node serves (the server maps client ids to nodes with it)."""
    pid, num = _partition(context)
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid, "num-partitions": num})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of every client named in the message; uploads prefixed ``c<id>/``."""
    import torch

    from .client import is_finite_update, train_client
    from .records import add_client, from_record, to_record
    from .task import load_task

    torch.set_num_threads(int(context.run_config.get("client-threads", 1)))
    task = load_task(dict(context.run_config))
    cfg = msg.content["config"]
    payload = from_record(msg.content["arrays"])
    clients, sampled, rnd = list(cfg["clients"]), list(cfg["sampled"]), int(cfg["server-round"])
    uploads: dict[str, torch.Tensor] = {}
    metrics: dict[str, float | int] = {}
    total = 0
    for cid in clients:
        private = _private(context, task, cid)
        upload, new_private, loss, n = train_client(task, payload, private, cid, sampled, rnd)
        if is_finite_update(upload, loss):  # like the local engine: a rejected client keeps its state
            _store(context, cid, new_private)
        uploads.update(add_client(upload, cid))
        metrics[f"c{cid}/loss"] = loss
        metrics[f"c{cid}/num-examples"] = n
        total += n
    metrics["num-examples"] = total
    content = RecordDict({"arrays": to_record(uploads), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Every named client's personalized model on its own test split."""
    import torch

    from .client import evaluate_client
    from .records import from_record, unflatten_state
    from .task import load_task

    torch.set_num_threads(int(context.run_config.get("client-threads", 1)))
    task = load_task(dict(context.run_config))
    cfg = msg.content["config"]
    server = unflatten_state(from_record(msg.content["arrays"]), _other(msg.content))
    rnd = int(cfg["server-round"])
    metrics: dict[str, float | int] = {}
    for cid in list(cfg["clients"]):
        score, loss, n = evaluate_client(task, server, _private(context, task, cid), cid, rnd)
        metrics[f"c{cid}/score"] = score
        metrics[f"c{cid}/loss"] = loss
        metrics[f"c{cid}/num-examples"] = n
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _other(content: RecordDict) -> dict:
    """Non-tensor leaves of the server state (sent as a ConfigRecord ``server``)."""
    rec = content.get("server")
    return dict(rec) if isinstance(rec, ConfigRecord) else {}


__all__ = ["app"]
