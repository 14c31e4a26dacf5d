"""``PromptGrid``: ``send_and_receive`` over a grid's own push/pull, polling fast and honouring the timeout."""

import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from bouquet.flower.grid import PromptGrid, prompt


class SlowGrid(Grid):
    """Replies to each pushed message after ``delay`` seconds; ``pull_messages`` counts its calls."""

    def __init__(self, delay: float, answer: bool = True):
        self.delay, self.answer, self.pulls = delay, answer, 0
        self.pushed: dict[str, tuple[float, Message]] = {}

    def set_run(self, run) -> None:  # pragma: no cover
        pass

    @property
    def run(self):  # pragma: no cover
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return [1, 2]

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = f"m{len(self.pushed)}"
            self.pushed[mid] = (time.monotonic(), msg)
            ids.append(mid)
        return [*ids, ""]  # Flower's HttpGrid returns an empty id for a message it could not push

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic()
        out = []
        for mid in message_ids:
            sent, _ = self.pushed[mid]
            if self.answer and now - sent >= self.delay:
                rep = Message(RecordDict({"config": ConfigRecord({"of": mid})}), dst_node_id=0, message_type="train")
                rep.metadata.__dict__["_reply_to_message_id"] = mid
                out.append(rep)
        return out

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - PromptGrid's is under test
        raise NotImplementedError


def _msgs(n: int) -> list[Message]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # Flower stamps messages with it
    return [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=i, message_type="train") for i in range(n)]


def test_replies_are_collected_soon_after_they_come():
    inner = SlowGrid(delay=0.3)
    start = time.monotonic()
    replies = PromptGrid(inner).send_and_receive(_msgs(3), timeout=10.0)
    took = time.monotonic() - start
    assert sorted(r.content["config"]["of"] for r in replies) == ["m0", "m1", "m2"]
    assert 0.3 <= took < 1.0  # seen within one poll (at most 0.2 s) of arriving, not after Flower's 3 s
    assert inner.pulls < 15


def test_the_timeout_ends_the_wait_with_the_replies_so_far():
    start = time.monotonic()
    assert list(PromptGrid(SlowGrid(delay=0.0, answer=False)).send_and_receive(_msgs(2), timeout=0.5)) == []
    assert 0.5 <= time.monotonic() - start < 1.5


def test_only_the_deployment_grid_is_wrapped():
    grid = SlowGrid(delay=0.0)
    assert prompt(grid) is grid
    assert PromptGrid(grid).get_node_ids() == [1, 2]
