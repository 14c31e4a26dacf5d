"""Helpers of the Flower tests: an in-process Grid (fast logic tests) and a small experiment.

(Not a conftest.py: test modules import it by name, and tests/data has its own conftest.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from bouquet.flower.records import content_values

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from datafile_writers import write_idx_dir  # noqa: E402  (tiny IDX files in the real format)

SMALL = """
name = "flower_small"
algorithms = ["fedavg"]

[data]
name = "synthetic_linear"
num_clients = 6
num_clusters = 2

[model]
name = "linear"

[run]
rounds = 3
clients_per_round = 4
batch_size = 4
eval_every = 1
seeds = [0]
vectorized = false

[train]
lr = 0.1
"""


def idx_experiment(path: Path, algorithm: str = "floral") -> str:
    """A 6-client MNIST-format experiment read from the tiny IDX files written into ``path``."""
    write_idx_dir(path)
    return SMALL.replace('algorithms = ["fedavg"]', f'algorithms = ["{algorithm}"]').replace(
        'name = "synthetic_linear"', f'name = "mnist"\npath = "{path}"')


class LoopbackGrid(Grid):
    """Delivers messages to ClientApps in this process, one ``Context`` per node (state persists).

    ``fail(node_id, message) -> bool`` drops a message (a node that died), ``tamper`` edits a reply.
    """

    def __init__(self, client_app, run_config: dict, num_nodes: int,
                 fail: Callable[[int, Message], bool] | None = None,
                 tamper: Callable[[Message], None] | None = None, node_configs: list[dict] | None = None):
        self.app, self.fail, self.tamper = client_app, fail, tamper
        self.last_round: dict[int, int] = {}  # node -> server-round of the last message it was sent
        self.last_eval: dict[int, int | None] = {}  # node -> the round that message asked it to evaluate
        # Flower stamps messages with the process's task identity (set by the real runtimes)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i,
                             node_config=node_configs[i] if node_configs else {"partition-id": i,
                                                                                "num-partitions": num_nodes},
                             state=RecordDict(), run_config=dict(run_config))
            for i in range(num_nodes)
        }

    def set_run(self, run) -> None:  # pragma: no cover - not used in process
        pass

    @property
    def run(self):  # pragma: no cover
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            cfg = content_values(msg.content, "config")
            if cfg is not None and "server-round" in cfg:
                self.last_round[node] = int(cfg["server-round"])
                # the round whose evaluation the message asks for (a folded one rides on a train message)
                evaluated = cfg.get("eval:round", cfg["server-round"] if msg.metadata.message_type == "evaluate"
                                    else None)
                self.last_eval[node] = None if evaluated is None else int(evaluated)
            if self.fail is not None and self.fail(node, msg):
                continue
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as err:  # the runtimes reply with an error (e.g. no handler for the message type)
                reason = f"{type(err)}:<'{err}'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
            if self.tamper is not None:
                self.tamper(reply)
            replies.append(reply)
        return replies
