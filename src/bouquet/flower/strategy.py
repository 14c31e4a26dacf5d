"""``BouquetStrategy``: the round driver (``engine.rounds``) behind Flower's Message-API ``Strategy``.

Flower's own ``Strategy.start`` runs the rounds; this class only translates. ``configure_train``
samples with the driver and sends ``alg.broadcast(server)`` to the nodes serving the sampled clients;
``aggregate_train`` checks every client's reply against the upload the algorithm would produce
(keys, shapes, dtypes), stacks the usable ones and hands them to ``RoundDriver.finish`` (validation,
robust aggregation, ``alg.aggregate``, the round record). Evaluation rounds ask every node for its
clients' personalized scores and summarize them like the simulator. Replies that never come are
``failed``; a round with fewer than ``min_replies`` accepted updates keeps the server state (``skipped``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import fields

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from ..algorithms import payload_nbytes
from ..engine.evaluation import ClientScores, summarize
from ..engine.rounds import ClientResults, RoundDriver, RunState
from ..engine.summary import RunLog, metric_name, param_counts
from ..engine.validation import example_batch, upload_problem, upload_spec
from .discovery import NodeDiscoveryError, Nodes, discover, rejoin
from .job import FlowerJob
from .records import (
    EVAL,
    TensorRecord,
    content_values,
    flatten_state,
    from_record,
    pack_many,
    shared_config,
    split_clients,
    to_record,
)

log = logging.getLogger("bouquet.flower")
__all__ = ["BouquetStrategy", "NodeDiscoveryError"]


class BouquetStrategy(Strategy):
    """One ``FlowerJob`` over a Flower ``Grid``; ``log.records`` holds one record per round (simulator keys)."""

    def __init__(self, job: FlowerJob, on_round: Callable[[dict], None] | None = None, nodes: Nodes | None = None):
        self.job, self.on_round = job, on_round
        alg, info = job.alg, job.info
        self.driver = RoundDriver(alg, info.train_sizes(), clients_per_round=job.spec.clients_per_round,
                                  seed=job.seed, robust=job.robust, min_accepted=job.settings.min_replies)
        start = self.driver.init_state(info.clusters)
        first = {k: v[0] for k, v in start.clients.items()}
        # What a correct upload looks like, from the algorithm on one synthetic example (no client data).
        example = example_batch(info.input_shape, info.objective, info.target_shape)
        self.expected = upload_spec(alg, alg.broadcast(start.server), first, example)
        self.counts = param_counts(alg, start, job.base_params)
        self.state = start
        self.state.clients = {}  # the server never holds client states: they live on the SuperNodes
        self.log = RunLog(metric_name(alg.objective))
        self.nodes = nodes if nodes is not None else Nodes()  # client -> node; stock Flower ClientApps
        self.received_keys: set[str] = set()
        self.offset = 0  # rounds done before this ServerApp started (a resumed run)
        self.checkpointed = -1  # round of the last server checkpoint (-1: none; nodes keep one state version)
        #: rounds whose records must close at once (the ServerApp checkpoints after them): not folded; 0: none
        self.checkpoint_every = 0
        self._fold_round: int | None = None  # the round whose evaluation the next train messages carry
        self._round: dict = {}
        self._sent: dict[str, dict[int, list[int]]] = {}  # message type -> node -> the clients its last one named

    # -- nodes ---------------------------------------------------------------------------------
    def discover(self, grid: Grid) -> dict[int, int]:
        """Map every client id to the node serving it (the query handshake, ``discovery.discover``)."""
        self.nodes = discover(grid, self.job.num_clients, self.job.settings.node_wait)
        return self.nodes.node_of

    @property
    def node_of(self) -> dict[int, int]:
        return self.nodes.node_of

    @property
    def partitions(self) -> dict[int, int]:
        return self.nodes.partitions

    @property
    def stock(self) -> set[int]:
        return self.nodes.stock

    def _federation(self) -> dict:
        """What every message tells a node of the federation (its size, for a node with its own data)."""
        return {"num-clients": self.job.num_clients, "total-examples": int(self.job.info.train_sizes().sum())}

    def _messages(self, clients: Iterable[int], tensors: dict, config: dict, kind: str, stock: dict | None = None,
                  extra: dict | None = None, per_node: Callable[[int], dict] | None = None) -> list[Message]:
        """One message per node serving ``clients``. bouquet's nodes get ``tensors`` packed, the config in the
        packed index (``packed = false``: Flower's layout and a ``ConfigRecord``), plus the records ``extra``
        and the config entries ``per_node(node)``; stock Flower ClientApps get the records ``stock``."""
        by_node: dict[int, list[int]] = {}
        for cid in clients:
            by_node.setdefault(self.node_of[cid], []).append(cid)
        self._sent[kind] = by_node
        is_stock = {n: stock is not None and n in self.nodes.stock for n in by_node}
        cfgs = {n: {**config, "clients": cs, **(per_node(n) if per_node and not is_stock[n] else {})}
                for n, cs in by_node.items()}
        ours = [n for n in by_node if not is_stock[n]]
        packed = self.job.settings.packed
        shared = shared_config({n: cfgs[n] for n in ours}) if packed and len(ours) > 1 else None
        if shared is not None:  # one content for all of bouquet's nodes: Flower pushes it to the SuperLink once
            wire = dict.fromkeys(ours, pack_many(tensors, [shared])[0])
        else:
            wire = dict(zip(ours, pack_many(tensors, [cfgs[n] for n in ours]), strict=True)) if packed and ours else {}
        plain = to_record(tensors) if not packed and ours else None
        out = []
        for node in by_node:
            if is_stock[node]:
                content = {**stock, "config": ConfigRecord(cfgs[node])}
            elif packed:  # one object less per message than a ConfigRecord beside the arrays
                content = {"arrays": wire[node], **(extra or {})}
            else:
                content = {"arrays": plain, **(extra or {}), "config": ConfigRecord(cfgs[node])}
            out.append(Message(RecordDict(content), dst_node_id=node, message_type=kind))
        return out

    # -- training ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per node serving sampled clients, carrying ``alg.broadcast(server)``."""
        server_round += self.offset  # a resumed run goes on with its own round numbers
        if not self.node_of:
            self.discover(grid)
        else:
            rejoin(grid, self.nodes)
        ids, sampler = self.driver.sample(self.state)
        payload = self.job.alg.broadcast(self.state.server)
        self._round = {"start": time.perf_counter(), "ids": ids, "sampler": sampler, "payload": payload}
        cfg = {**dict(config), "server-round": server_round, "sampled": ids.tolist(), **self._federation(),
               "checkpoint-round": self.checkpointed if self.checkpointed >= 0 else server_round - 1}
        tensors, per_node = payload, None
        if self._fold_round is not None:  # the previous round's evaluation rides along (``_start_folded``)
            state, other = flatten_state(self.state.server)
            tensors = {**payload, **{EVAL + k: v for k, v in state.items()}}
            folded = {EVAL + "round": self._fold_round, **{f"{EVAL}server/{k}": v for k, v in other.items()}}

            def per_node(node: int) -> dict:
                return {**folded, EVAL + "clients": [c for c in range(self.job.num_clients) if self.node_of[c] == node]}
        # bouquet's nodes get the payload packed (one Array); stock Flower ClientApps Flower's plain `arrays`
        return self._messages(ids.tolist(), tensors, cfg, MessageType.TRAIN, {"arrays": to_record(payload)},
                              per_node=per_node)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check and stack each client's upload, then the driver screens, aggregates and records."""
        server_round += self.offset  # a resumed run goes on with its own round numbers
        sampled = self._round["ids"].tolist()
        uploads, losses, nodes = self._collect(server_round, replies, sampled)
        usable, refused = [], {}
        for cid in sampled:
            if cid in uploads:
                problem = upload_problem(uploads[cid], self.expected)
                if problem is None:
                    usable.append(cid)
                else:
                    refused[cid] = problem
                    log.warning("bouquet: round %d: refused the update of client %d (node %s): %s", server_round,
                                cid, nodes[cid], problem)
        failed = tuple(c for c in sampled if c not in uploads)
        if failed:
            log.warning("bouquet: round %d: no reply for clients %s", server_round, list(failed))
        results = ClientResults(
            ids=torch.tensor(usable, dtype=torch.long),
            uploads={k: torch.stack([uploads[c][k] for c in usable]) if usable else torch.empty(0, *shape, dtype=dt)
                     for k, (shape, dt) in self.expected.items()},
            losses=torch.tensor([losses[c] for c in usable], dtype=torch.float64),
            refused=refused, refused_losses={c: losses[c] for c in refused}, failed=failed,
            bytes_up=sum(payload_nbytes(u) for u in uploads.values()))
        self.state, record = self.driver.finish(self.state, self._round["ids"], self._round["sampler"],
                                                self._round["payload"], results)
        record["nodes"] = {str(c): nodes.get(c, self.node_of[c]) for c in sampled}
        self._round["record"] = record
        metrics = {"train_loss": record["train_loss"] if record["train_loss"] is not None else float("nan"),
                   "accepted": len(usable) - len(record.get("rejected", [])) + len(refused),
                   "failed": len(failed)}
        return to_record(self.job.alg.broadcast(self.state.server)), MetricRecord(metrics)

    def _collect(self, server_round: int, replies: Iterable[Message], sampled: list[int]):
        """Per-client uploads, losses and node ids of the replies that answered for a sampled client."""
        uploads: dict[int, dict[str, torch.Tensor]] = {}
        losses: dict[int, float] = {}
        nodes: dict[int, int] = {}
        for rep in replies:
            node = rep.metadata.src_node_id
            if rep.has_error():
                log.warning("bouquet: round %d: node %s replied with an error: %s", server_round, node,
                            rep.error.reason)
                continue
            arrays = rep.content.get("arrays")
            try:
                per_client = split_clients(from_record(arrays)) if isinstance(arrays, TensorRecord) else {}
                metrics = content_values(rep.content, "metrics")
            except ValueError as err:  # a malformed packed record: the node's clients count as failed
                log.warning("bouquet: round %d: node %s: %s", server_round, node, err)
                continue
            self.received_keys.update(f"metrics:{k}" for k in metrics)
            for up in per_client.values():
                self.received_keys.update(up)
            # a client answered when its loss is reported (an empty upload is valid: Local sends nothing)
            answered = {int(k[1:-5]) for k in metrics if k.endswith("/loss") and k[1:-5].isdigit()}
            sent = self._sent.get(MessageType.TRAIN, {}).get(node, [])
            if not answered and len(sent) == 1 and set(per_client) <= {-1}:  # Flower's convention, one client
                cid = sent[0]
                per_client = {cid: per_client.get(-1, {})}
                metrics[f"c{cid}/loss"] = metrics.get("train_loss", metrics.get("loss", float("nan")))
                answered = {cid}
            for cid in sorted(answered):
                if cid not in sampled:
                    log.warning("bouquet: round %d: node %s answered for client %d, which was not sampled",
                                server_round, node, cid)
                    continue
                uploads[cid], losses[cid], nodes[cid] = per_client.get(cid, {}), float(metrics[f"c{cid}/loss"]), node
        return uploads, losses, nodes

    # -- evaluation ----------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """At evaluation rounds, every node scores all its clients; the flattened server state goes along."""
        server_round += self.offset  # a resumed run goes on with its own round numbers
        if not self.job.spec.is_eval_round(server_round):
            return []
        cfg = {**dict(config), "server-round": server_round, **self._federation()}
        return self._evaluations(range(self.job.num_clients), cfg)

    def _evaluations(self, clients: Iterable[int], cfg: dict) -> list[Message]:
        """Evaluation messages: bouquet's nodes get the flattened server state, stock ones the plain global model."""
        tensors, other = flatten_state(self.state.server)
        return self._messages(clients, tensors, cfg, MessageType.EVALUATE,
                              {"arrays": to_record(self.job.alg.broadcast(self.state.server))},
                              extra={"server": ConfigRecord(other)})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """``summarize`` over every client that answered (the others are ``missing``); closes the round."""
        server_round += self.offset  # a resumed run goes on with its own round numbers
        ev = self._scores(server_round, replies) if self.job.spec.is_eval_round(server_round) else None
        self._close(self._round, ev, time.perf_counter() - self._round["start"])
        return None if ev is None else _eval_metrics(ev)

    def _close(self, rnd: dict, ev: dict | None, seconds: float) -> None:
        """The round record of ``rnd`` (a ``_round`` dict) with its evaluation: logged, then ``on_round``."""
        record = rnd.pop("record")
        if ev is not None:
            record["eval"] = {"metric": self.log.metric, **ev}
        record = {"algorithm": self.job.name, "seed": self.job.seed, **record, "seconds": seconds}
        self.log.add(record)
        if self.on_round is not None:
            self.on_round(record)

    def _scores(self, server_round: int, replies: Iterable[Message]) -> dict | None:
        """Every client's score from evaluation replies (and the evaluations folded into train replies)."""
        num = self.job.num_clients
        score, loss = torch.zeros(num, dtype=torch.float64), torch.zeros(num, dtype=torch.float64)
        n, seen = torch.zeros(num, dtype=torch.long), set()
        for rep in replies:
            if rep.has_error():
                log.warning("bouquet: round %d: evaluation error from node %s: %s", server_round,
                            rep.metadata.src_node_id, rep.error.reason)
                continue
            try:
                m = content_values(rep.content, "metrics")
            except ValueError as err:
                log.warning("bouquet: round %d: evaluation from node %s: %s", server_round, rep.metadata.src_node_id,
                            err)
                continue
            self.received_keys.update(f"metrics:{k}" for k in m)
            folded = rep.metadata.message_type == MessageType.TRAIN
            if folded:  # a train reply's scores of the previous round
                m = {k[len(EVAL):]: v for k, v in m.items() if k.startswith(EVAL)}
            sent = self._sent.get(MessageType.EVALUATE, {}).get(rep.metadata.src_node_id, [])
            if not folded and len(sent) == 1 and f"c{sent[0]}/score" not in m:  # Flower's convention
                s = next((m[k] for k in ("eval_score", "eval_acc", "eval_mse", "accuracy") if k in m), None)
                if s is not None and "num-examples" in m:
                    c = sent[0]
                    m.update({f"c{c}/score": s, f"c{c}/loss": m.get("eval_loss", m.get("loss", s)),
                              f"c{c}/num-examples": m["num-examples"]})
            for cid in range(num):
                if f"c{cid}/score" in m:
                    score[cid], loss[cid] = float(m[f"c{cid}/score"]), float(m[f"c{cid}/loss"])
                    n[cid] = int(m[f"c{cid}/num-examples"])
                    seen.add(cid)
        missing = [c for c in range(num) if c not in seen]
        if len(missing) == num:
            return None
        ev = summarize(ClientScores(score, loss, n), self.job.info.clusters)
        if missing:
            log.warning("bouquet: round %d: no evaluation from clients %s", server_round, missing)
            ev["per_client"] = [None if c in missing else v for c, v in enumerate(ev["per_client"])]
            ev["missing"] = missing
        return ev

    # -- evaluation folded into the next round's train messages ---------------------------------
    def _fold_rest(self, messages: list[Message], server_round: int) -> tuple[set[int], list[Message]]:
        """The nodes whose train ``messages`` carry round ``server_round``'s evaluation (bouquet's), and the
        evaluation messages the other nodes (not sampled, or stock Flower ClientApps) still need."""
        folded = {m.metadata.dst_node_id for m in messages} - self.nodes.stock
        rest = [c for c in range(self.job.num_clients) if self.node_of[c] not in folded]
        self._sent[MessageType.EVALUATE] = {}
        return folded, self._evaluations(rest, {"server-round": server_round, **self._federation()}) if rest else []

    def _start_folded(self, grid: Grid, rounds: int, timeout: float) -> Result:
        """The rounds with each evaluation sent with the next round's train messages: one exchange per round
        where Flower's ``start`` has two. The records are the same; round N's closes in round N + 1."""
        result, pending = Result(), None  # pending: the previous round, when its evaluation is still to come
        for current in range(1, rounds + 1):
            self._fold_round = pending["round"] if pending is not None else None
            train = list(self.configure_train(current, ArrayRecord(), ConfigRecord(), grid))
            self._fold_round = None
            folded, evals = self._fold_rest(train, pending["round"]) if pending is not None else (set(), [])
            replies = list(grid.send_and_receive(train + evals, timeout=timeout))
            if pending is not None:
                ev = self._scores(pending["round"], [r for r in replies if r.has_error() or r.metadata.message_type
                                                     == MessageType.EVALUATE or r.metadata.src_node_id in folded])
                self._close(pending, ev, self._round["start"] - pending["start"])
                if ev is not None:
                    result.evaluate_metrics_clientapp[pending["round"]] = _eval_metrics(ev)
            trained = [r for r in replies if r.metadata.message_type == MessageType.TRAIN]
            result.arrays, result.train_metrics_clientapp[current] = self.aggregate_train(current, trained)
            pending, server_round = self._round, current + self.offset
            pending["round"] = server_round
            if not self.job.spec.is_eval_round(server_round):
                self._close(pending, None, time.perf_counter() - pending["start"])
                pending = None
            elif self.checkpoint_every and server_round % self.checkpoint_every == 0:
                self._evaluate_now(grid, pending, timeout, result)  # the checkpoint holds the closed record
                pending = None
        if pending is not None:  # the last evaluation has no train message to ride on
            self._evaluate_now(grid, pending, timeout, result)
        return result

    def _evaluate_now(self, grid: Grid, pending: dict, timeout: float, result: Result) -> None:
        """Round ``pending``'s evaluation in an exchange of its own, as Flower's loop does; closes its record."""
        self._round, rnd = pending, pending["round"] - self.offset
        replies = grid.send_and_receive(self.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), grid),
                                        timeout=timeout)
        out = self.aggregate_evaluate(rnd, replies)
        if out is not None:
            result.evaluate_metrics_clientapp[pending["round"]] = out

    # -- the run -------------------------------------------------------------------------------
    def summary(self) -> None:
        log.info("bouquet: %s seed %d, %d clients, %d per round", self.job.name, self.job.seed,
                 self.job.num_clients, self.job.spec.clients_per_round)

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int | None = None,
              timeout: float | None = None, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn=None) -> Result:
        """Flower's ``Strategy.start``; unset arguments come from the job (rounds, round timeout). Non-empty
        ``initial_arrays`` replace the algorithm's initial global parameters (same keys and shapes)."""
        if initial_arrays is not None and len(initial_arrays):
            self._set_initial(from_record(initial_arrays))
        arrays = to_record(self.job.alg.broadcast(self.state.server))
        remaining = (num_rounds or self.job.spec.rounds) - self.offset
        if self.job.settings.fold_evaluation and evaluate_fn is None:
            return self._start_folded(grid, remaining, timeout or self.job.settings.round_timeout)
        return super().start(grid, arrays, remaining, timeout or self.job.settings.round_timeout, train_config,
                             evaluate_config, evaluate_fn)

    # -- checkpoints ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The server's state after the last round: what a server checkpoint holds (no client state)."""
        return {"round": self.state.round, "state": {f.name: getattr(self.state, f.name) for f in fields(self.state)},
                **self.log.snapshot(), "records": list(self.log.records), "received_keys": sorted(self.received_keys)}

    def restore(self, snap: dict) -> None:
        """Continue from ``snapshot()``: rounds ``snap["round"] + 1`` onwards (initial arrays are then ignored)."""
        self.state = RunState(**snap["state"])
        self.log = RunLog.restore(self.log.metric, snap, keep=True)
        self.log.records = list(snap["records"])
        self.received_keys = set(snap["received_keys"])
        self.offset = self.checkpointed = self.state.round

    def _set_initial(self, params: dict[str, torch.Tensor]) -> None:
        current = self.state.server["params"]
        if set(params) != set(current) or any(params[k].shape != v.shape for k, v in current.items()):
            raise ValueError(f"initial_arrays: expected the global parameters {sorted(current)} with their shapes")
        self.state.server = {**self.state.server, "params": {k: v.to(current[k].dtype) for k, v in params.items()}}


def _eval_metrics(ev: dict) -> MetricRecord:
    """The evaluation summary Flower's ``Result`` keeps."""
    return MetricRecord({"mean": ev["mean"], "std": ev["std"], "loss": ev["loss"]})
