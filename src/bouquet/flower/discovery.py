"""Which SuperNode serves which client, and what the nodes' data looks like: the QUERY handshake.

Before round 1 the server sends every node a ``query``; bouquet's ClientApp answers with its partition
(``partition-id``, ``num-partitions``), the federation ids of the clients it serves and their sizes and
true clusters, and the shape of its data (``data`` ConfigRecord, JSON). The server builds the federation's
``DatasetInfo`` from these replies, so it never needs the data itself. A node whose ClientApp has no query
handler (a stock Flower ClientApp answers with an error) takes a partition no bouquet node claimed, in
node-id order; with no bouquet node at all, one client per node. Nodes that join later (a restarted
SuperNode gets a new node id) are asked too, and take over the clients they claim.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from ..data.federated import DatasetInfo

log = logging.getLogger("bouquet.flower")


class NodeDiscoveryError(RuntimeError):
    """Not every client of the federation has a connected SuperNode, or the nodes disagree."""


@dataclass
class Nodes:
    """The federation as the nodes described it."""

    node_of: dict[int, int] = field(default_factory=dict)  # client id -> node id
    partitions: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    stock: set[int] = field(default_factory=set)  # nodes without a query handler
    sizes: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # client -> (train, test, cluster)
    dataset: dict | None = None  # name, input_shape, num_outputs, objective, num_clusters, target_shape
    asked: set[int] = field(default_factory=set)  # every node queried so far

    def info(self, num_clients: int) -> DatasetInfo | None:
        """The federation's ``DatasetInfo`` from the replies; None when some client's node did not report it."""
        if self.dataset is None or set(self.sizes) != set(range(num_clients)):
            return None
        rows = torch.tensor([self.sizes[c] for c in range(num_clients)], dtype=torch.long)
        d = self.dataset
        return DatasetInfo(d["name"], tuple(d["input_shape"]), int(d["num_outputs"]), d["objective"],
                           int(d["num_clusters"]), rows[:, 0].clone(), rows[:, 1].clone(), rows[:, 2].clone(),
                           tuple(d["target_shape"]), meta={"from": "nodes"})


def query_content(pid: int, num: int, clients: dict[int, tuple[int, int, int]], dataset: dict) -> RecordDict:
    """A bouquet node's answer to the query: its partition, clients (id -> train, test, cluster), data shape."""
    return RecordDict({"metrics": MetricRecord({"partition-id": pid, "num-partitions": num}),
                       "data": ConfigRecord({"clients": json.dumps({str(k): list(v) for k, v in clients.items()}),
                                             "dataset": json.dumps(dataset)})})


def _ask(grid: Grid, nodes: list[int], timeout: float) -> list[Message]:
    msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes]
    return list(grid.send_and_receive(msgs, timeout=timeout))


class _Replies:
    """The bouquet nodes' answers gathered so far."""

    def __init__(self, num_clients: int):
        self.k = num_clients
        self.pid_of: dict[int, int] = {}  # node -> partition
        self.clients: dict[int, list[int]] = {}  # node -> its clients
        self.num: int | None = None
        self.stock: list[int] = []
        self.found = Nodes()

    def add(self, rep: Message) -> None:
        node = rep.metadata.src_node_id
        if rep.has_error():
            if rep.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION and "bouquet" in rep.error.reason:
                # bouquet's ClientApp failed to describe its data (e.g. a bad data directory): not a stock node
                raise NodeDiscoveryError(f"node {node} cannot serve its clients: {rep.error.reason[:500]}")
            if rep.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION and node not in self.stock:
                self.stock.append(node)
            return
        m = rep.content["metrics"]
        pid, num = int(m["partition-id"]), int(m["num-partitions"])
        data = rep.content.get("data")
        if isinstance(data, ConfigRecord):
            sizes = {int(k): tuple(v) for k, v in json.loads(str(data["clients"])).items()}
            bad = [c for c in sizes if not 0 <= c < self.k]
            if bad:
                raise NodeDiscoveryError(f"node {node} serves clients {bad}, not clients of the experiment "
                                         f"({self.k} clients, data.num_clients)")
            dataset = json.loads(str(data["dataset"]))
            if self.found.dataset is not None and dataset != self.found.dataset:
                raise NodeDiscoveryError(f"node {node} has data {dataset}, another node {self.found.dataset}")
            self.found.dataset = dataset
            self.found.sizes.update(sizes)
            owned = sorted(sizes)
        else:  # an older bouquet node: partition by id modulo
            owned = [c for c in range(self.k) if c % num == pid]
        for old in [n for n, cs in self.clients.items() if n != node and set(cs) & set(owned)]:
            self.clients.pop(old)  # a restarted node takes over its clients
            self.pid_of.pop(old)
        self.pid_of[node], self.clients[node], self.num = pid, owned, num

    def uncovered(self) -> list[int]:
        claimed = {c for cs in self.clients.values() for c in cs}
        return [c for c in range(self.k) if c not in claimed]

    def done(self) -> bool:
        free = sorted({c % (self.num or self.k) for c in self.uncovered()})
        return len(self.stock) >= len(free) and bool(self.pid_of or self.stock) and not (
            set(free) & set(self.pid_of.values()))

    def result(self) -> Nodes:
        num = self.num or self.k
        free = sorted({c % num for c in self.uncovered()})
        stock = sorted(self.stock)[:len(free)]
        node_of = {c: node for node, cs in self.clients.items() for c in cs}
        for p, node in zip(free, stock, strict=False):
            node_of.update({c: node for c in self.uncovered() if c % num == p})
        partitions = self.pid_of | dict(zip(stock, free, strict=False))
        asked = set(self.clients) | set(self.stock)
        return Nodes(node_of, partitions, set(stock), self.found.sizes, self.found.dataset, asked)


def discover(grid: Grid, num_clients: int, wait: float) -> Nodes:
    """Query every node until each of the ``num_clients`` clients has one (``wait`` seconds at most)."""
    replies = _Replies(num_clients)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        asked = set(replies.clients) | set(replies.stock)
        nodes = [n for n in grid.get_node_ids() if n not in asked]
        if nodes:
            for rep in _ask(grid, nodes, min(60.0, wait)):
                replies.add(rep)
        if replies.done():
            break
        time.sleep(0.5)
    else:
        claimed = sorted(set(replies.pid_of.values()))
        raise NodeDiscoveryError(f"partitions {claimed} of {replies.num} reachable (clients "
                                 f"{replies.uncovered()[:20]} have no node, {len(replies.stock)} nodes without a "
                                 f"query handler) after {wait:.0f}s (node-wait)")
    found = replies.result()
    log.info("bouquet: %d clients on %d SuperNodes (%d stock Flower ClientApps)", len(found.node_of),
             len(found.partitions), len(found.stock))
    return found


def rejoin(grid: Grid, nodes: Nodes, timeout: float = 30.0) -> list[int]:
    """Ask nodes that joined since discovery (a restarted SuperNode) and hand them the clients they claim."""
    new = [n for n in grid.get_node_ids() if n not in nodes.asked]
    nodes.asked.update(new)
    moved = []
    for rep in _ask(grid, new, timeout) if new else []:
        if rep.has_error():
            continue
        node = rep.metadata.src_node_id
        m = rep.content["metrics"]
        data = rep.content.get("data")
        claimed = sorted(int(k) for k in json.loads(str(data["clients"]))) if isinstance(data, ConfigRecord) else []
        for c in claimed:
            if c in nodes.node_of:
                nodes.node_of[c] = node
                moved.append(c)
        nodes.partitions[node] = int(m["partition-id"])
    if moved:
        log.info("bouquet: clients %s moved to a node that joined", moved)
    return moved
