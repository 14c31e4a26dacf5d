"""The bouquet ``Strategy`` (Flower Message API): any registered algorithm, no Flower code of its own.

The server holds the algorithm's server state and the local engine's seeded sampler
(``Simulator.sample``); each round it sends ``alg.broadcast(server)`` to the SuperNodes serving the
sampled clients, checks every client's upload (``validation.upload_problem``: keys, shapes, dtypes,
NaN/Inf, private keys), aggregates the accepted ones with ``alg.aggregate`` and records per-client
metrics (by client id and node id). Evaluation asks every node for its clients' personalized
scores and summarizes them with ``engine.evaluation.summarize``. Replies that never come (a node
died, a timeout) or carry an error are counted as ``failed``; a round with fewer than
``min_replies`` accepted updates keeps the server state (``skipped``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..algorithms.base import payload_nbytes
from ..engine.batching import TRAIN, round_batches
from ..engine.evaluation import ClientScores, summarize
from ..engine.simulator import SimState, Simulator
from ..engine.validation import upload_problem
from .records import flatten_state, from_record, split_clients, tensor_spec, to_record
from .task import Settings, Task

log = logging.getLogger("bouquet.flower")


class NodeDiscoveryError(RuntimeError):
    """Not every partition of the federation has a connected SuperNode."""


class BouquetStrategy(Strategy):
    """Runs one ``Task`` over a Flower ``Grid``; ``records`` holds one dict per round (local-engine keys)."""

    def __init__(self, task: Task, settings: Settings):
        self.task, self.settings = task, settings
        self.sim = Simulator(task.alg, task.data, task.spec)
        state = self.sim.init_state()
        from ..runner import param_counts

        self.param_counts = param_counts(task.alg, self.sim, state, task.base_params)
        self.expected = self._expected_upload(state)
        # the server never holds client states: they live on the SuperNodes
        self.state = replace(state, clients={})
        self.node_of: dict[int, int] = {}  # client id -> node id
        self.partitions: dict[int, int] = {}  # node id -> partition id
        self.records: list[dict] = []
        self.received_keys: set[str] = set()
        self._sampled: list[int] = []

    # -- setup ---------------------------------------------------------------------------------
    def _expected_upload(self, state: SimState) -> dict:
        """Shapes/dtypes of a correct upload: client 0's first computation, run once on the server."""
        alg, spec, train = self.task.alg, self.task.spec, self.sim.train
        ids = torch.tensor([0])
        index, weight = round_batches(train, ids, seed=spec.seed, round_idx=1, batch_size=spec.batch_size,
                                      epochs=spec.local_epochs, steps=spec.local_steps, purpose=TRAIN,
                                      shuffle=spec.shuffle)
        batches = {k: v[0] for k, v in train.gather(index, weight).items()}
        private = {k: v[0] for k, v in state.clients.items()}
        payload = alg.broadcast(state.server)
        with torch.no_grad():
            trainable = alg.client_init(payload, private, batches)
            extra = (batches,) if alg.final_batches else ()
            upload, _ = alg.client_final(trainable, payload, private, self.sim.num_examples[0], *extra)
        return tensor_spec(upload)

    def discover(self, grid: Grid) -> dict[int, int]:
        """Map every client id to the node serving its partition (``partition-id`` = id mod partitions)."""
        deadline = time.monotonic() + self.settings.node_wait
        partitions: dict[int, int] = {}
        num = None
        while time.monotonic() < deadline:
            nodes = [n for n in grid.get_node_ids() if n not in partitions.values()]
            if nodes:
                msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n,
                                message_type=MessageType.QUERY) for n in nodes]
                for rep in grid.send_and_receive(msgs, timeout=min(60.0, self.settings.node_wait)):
                    if rep.has_error():
                        continue
                    m = rep.content["metrics"]
                    partitions[int(m["partition-id"])] = rep.metadata.src_node_id
                    num = int(m["num-partitions"])
            if num is not None and all(p in partitions for p in range(num)):
                break
            time.sleep(0.5)
        if num is None or not all(p in partitions for p in range(num)):
            raise NodeDiscoveryError(f"partitions {sorted(partitions)} of {num} reachable after "
                                     f"{self.settings.node_wait:.0f}s (node-wait)")
        self.node_of = {cid: partitions[cid % num] for cid in range(self.task.data.num_clients)}
        self.partitions = {node: p for p, node in partitions.items()}
        log.info("bouquet: %d clients on %d SuperNodes", len(self.node_of), num)
        return self.node_of

    def _by_node(self, clients: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for cid in clients:
            out.setdefault(self.node_of[cid], []).append(cid)
        return out

    # -- Strategy interface --------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per node serving sampled clients; the payload is the same for all."""
        ids, sampler = self.sim.sample(self.state)
        self._sampled = ids.tolist()
        self._sampler = sampler
        msgs = []
        for node, clients in self._by_node(self._sampled).items():
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "clients": clients,
                                "sampled": self._sampled})
            msgs.append(Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=node,
                                message_type=MessageType.TRAIN))
        return msgs

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each client's upload, aggregate the accepted ones, record per-client metrics."""
        alg, n_all = self.task.alg, self.sim.num_examples
        uploads: dict[int, dict[str, torch.Tensor]] = {}
        losses: dict[int, float] = {}
        node_ids: dict[int, int] = {}
        for rep in replies:
            if rep.has_error():
                log.warning("bouquet: round %d: node %s replied with an error: %s", server_round,
                            rep.metadata.src_node_id, rep.error.reason)
                continue
            metrics = rep.content.get("metrics")
            arrays = rep.content.get("arrays")
            per_client = split_clients(from_record(arrays)) if isinstance(arrays, ArrayRecord) else {}
            metrics = dict(metrics) if isinstance(metrics, MetricRecord) else {}
            self.received_keys.update(f"metrics:{k}" for k in metrics)
            for up in per_client.values():
                self.received_keys.update(up)
            # a client answered when its loss is reported (an empty upload is valid: Local sends nothing)
            answered = {int(k[1:-5]) for k in metrics if k.endswith("/loss") and k[1:-5].isdigit()}
            for cid in sorted(set(per_client) - answered):
                log.warning("bouquet: round %d: node %s sent entries %s for no answering client",
                            server_round, rep.metadata.src_node_id, sorted(per_client[cid])[:3])
            for cid in sorted(answered):
                if cid not in self._sampled:
                    log.warning("bouquet: round %d: node %s answered for client %d, which was not sampled",
                                server_round, rep.metadata.src_node_id, cid)
                    continue
                uploads[cid] = per_client.get(cid, {})
                node_ids[cid] = rep.metadata.src_node_id
                losses[cid] = float(metrics[f"c{cid}/loss"])
        failed = [cid for cid in self._sampled if cid not in uploads]
        accepted: list[int] = []
        rejected: dict[int, str] = {}
        for cid in self._sampled:
            if cid in failed:
                continue
            problem = upload_problem(uploads[cid], self.expected)
            if problem is None and not torch.isfinite(torch.tensor(losses[cid])):
                problem = "training loss is NaN or Inf"
            if problem is None:
                accepted.append(cid)
            else:
                rejected[cid] = problem
                log.warning("bouquet: round %d: rejected the update of client %d (node %s): %s", server_round,
                            cid, node_ids[cid], problem)
        if failed:
            log.warning("bouquet: round %d: no reply for clients %s", server_round, failed)
        payload = alg.broadcast(self.state.server)
        down = payload_nbytes(payload) * len(self._sampled)
        up = sum(payload_nbytes(uploads[c]) for c in uploads)
        server = self.state.server
        skipped = len(accepted) < max(1, self.settings.min_replies)
        if skipped:
            log.warning("bouquet: round %d: %d accepted updates < min-replies %d; server state kept",
                        server_round, len(accepted), self.settings.min_replies)
        else:
            stacked = {k: torch.stack([uploads[c][k] for c in accepted]) for k in self.expected}
            server = alg.aggregate(server, stacked, n_all[accepted])
        replied = [c for c in self._sampled if c in losses and c not in failed]
        w = n_all[replied].to(torch.float64)
        lv = torch.tensor([losses[c] for c in replied], dtype=torch.float64)
        record = {
            "round": server_round,
            "clients": list(self._sampled),
            "train_loss": float((lv * w).sum() / w.sum()) if replied else float("nan"),
            "client_train_loss": [round(losses[c], 6) if c in losses else None for c in self._sampled],
            "bytes_up": up,
            "bytes_down": down,
            "bytes_total": self.state.bytes_up + self.state.bytes_down + up + down,
        }
        if rejected:
            record["rejected"] = sorted(rejected)
            record["rejected_reasons"] = {str(c): r for c, r in sorted(rejected.items())}
        if failed:
            record["failed"] = failed
        if skipped:
            record["skipped"] = True
        record["nodes"] = {str(c): node_ids.get(c, self.node_of[c]) for c in self._sampled}
        self.state = replace(self.state, round=server_round, server=server, sampler=self._sampler,
                             bytes_up=self.state.bytes_up + up, bytes_down=self.state.bytes_down + down)
        self.records.append(record)
        agg = {"train_loss": record["train_loss"], "accepted": len(accepted), "rejected": len(rejected),
               "failed": len(failed)}
        return to_record(alg.broadcast(server)), MetricRecord(agg)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every node evaluates all its clients; ``arrays`` is the flattened server state."""
        tensors, other = flatten_state(self.state.server)
        arrays = to_record(tensors)
        server_cfg = ConfigRecord({k: v for k, v in other.items()})
        msgs = []
        for node, clients in self._by_node(range(self.task.data.num_clients)).items():
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "clients": clients})
            content = RecordDict({"arrays": arrays, "config": cfg, "server": server_cfg})
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.EVALUATE))
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """``summarize`` over every client that answered; the others are listed as ``missing``."""
        num = self.task.data.num_clients
        score, loss = torch.zeros(num, dtype=torch.float64), torch.zeros(num, dtype=torch.float64)
        n = torch.zeros(num, dtype=torch.long)
        seen = set()
        for rep in replies:
            if rep.has_error():
                log.warning("bouquet: round %d: evaluation error from node %s: %s", server_round,
                            rep.metadata.src_node_id, rep.error.reason)
                continue
            m = rep.content["metrics"]
            self.received_keys.update(f"metrics:{k}" for k in m)
            for cid in range(num):
                if f"c{cid}/score" in m:
                    score[cid], loss[cid] = float(m[f"c{cid}/score"]), float(m[f"c{cid}/loss"])
                    n[cid] = int(m[f"c{cid}/num-examples"])
                    seen.add(cid)
        missing = [c for c in range(num) if c not in seen]
        if len(missing) == num:
            return None
        ev = summarize(ClientScores(score, loss, n), self.task.data.clusters)
        if missing:
            log.warning("bouquet: round %d: no evaluation from clients %s", server_round, missing)
            ev["per_client"] = [None if c in missing else v for c, v in enumerate(ev["per_client"])]
            ev["missing"] = missing
        self._last_eval = ev
        return MetricRecord({"mean": ev["mean"], "std": ev["std"], "loss": ev["loss"]})

    def summary(self) -> None:
        log.info("bouquet: %s seed %d, %d rounds", self.task.name, self.task.seed, len(self.records))

    # -- the run -------------------------------------------------------------------------------
    def run_rounds(self, grid: Grid, on_round=None) -> list[dict]:
        """Discover nodes, then train/aggregate/evaluate for ``run.rounds`` rounds (local-engine records)."""
        task, timeout = self.task, self.settings.round_timeout
        metric = "accuracy" if task.data.task == "classification" else "mse"
        if not self.node_of:
            self.discover(grid)
        for rnd in range(1, task.exp.run.rounds + 1):
            start = time.perf_counter()
            arrays = to_record(task.alg.broadcast(self.state.server))
            msgs = list(self.configure_train(rnd, arrays, ConfigRecord({}), grid))
            self.aggregate_train(rnd, grid.send_and_receive(msgs, timeout=timeout))
            rec = {"algorithm": task.name, "seed": task.seed, **self.records[-1]}
            if rnd % task.exp.run.eval_every == 0 or rnd == task.exp.run.rounds:
                msgs = list(self.configure_evaluate(rnd, ArrayRecord(), ConfigRecord({}), grid))
                self._last_eval = None
                self.aggregate_evaluate(rnd, grid.send_and_receive(msgs, timeout=timeout))
                if self._last_eval is not None:
                    rec["eval"] = {"metric": metric, **self._last_eval}
            rec["seconds"] = time.perf_counter() - start  # wall time of the round (training + evaluation)
            self.records[-1] = rec
            if on_round:
                on_round(rec)
        return self.records

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int | None = None,
              timeout: float | None = None, train_config=None, evaluate_config=None, evaluate_fn=None):
        """Flower's entry point; the run's settings come from the task, so the arguments are ignored."""
        return self.run_rounds(grid)
