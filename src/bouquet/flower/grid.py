"""A ``Grid`` that collects replies promptly.

Flower 1.42's ``send_and_receive`` pushes the messages and then looks for replies every 3 s in the deployment
runtime (``HttpGrid``; 0.1 s in the simulation runtime's ``InMemoryGrid``), so a round of train and evaluate
messages costs at least 6 s however fast the nodes answer. ``PromptGrid`` wraps the deployment's grid and does
the same with Flower's own ``push_messages`` / ``pull_messages``, polling after 10 ms, then doubling up to
``longest`` seconds: a reply is seen at most about as late as it has already taken, and never more than
``longest`` late (default 0.05 s: at most 20 polls a second while replies are due). A poll that found replies
starts the doubling again at 10 ms: the other nodes of a round tend to finish soon after. Everything else is the
wrapped grid's. ``prompt`` wraps only ``HttpGrid``: the simulation
runtime (and test grids) keep their own ``send_and_receive``.

A reply is listed by the SuperLink as soon as its node has announced it, before the node has pushed its
content objects; ``HttpGrid.pull_messages`` then retries each missing object after 1 s, 2 s, ...
(``PULL_INITIAL_BACKOFF``, a module constant of Flower's). ``PromptGrid`` pulls replies with the same calls
(``pull_replies``: Flower 1.42's ``HttpGrid.pull_messages``) but retries a missing object after 10 ms, doubling
up to 1 s. It needs ``HttpGrid``'s ``_runtime_client``, ``node`` and ``_run``; a grid without them (another
Flower version) keeps its own ``pull_messages``. Nothing of Flower's is edited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import httpx
from flwr.app import Message, Metadata, RecordDict
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesRequest  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.constant import SYSTEM_MESSAGE_TYPE
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, inflate_object_from_contents, pull_objects
from flwr.superlink.grid import HttpGrid

log = logging.getLogger("bouquet.flower")
#: HttpGrid attributes ``pull_replies`` uses (Flower 1.42)
_HTTP_GRID_PARTS = ("_runtime_client", "node", "_run")


def pull_replies(grid: HttpGrid, message_ids: Iterable[str], first_retry: float = 0.01,
                 longest_retry: float = 1.0) -> list[Message]:
    """Flower 1.42's ``HttpGrid.pull_messages``, with a missing object retried after ``first_retry`` seconds,
    doubling up to ``longest_retry``, instead of 1 s up to 10 s. An object that never comes gives an error reply."""
    run_id = grid._run.run_id  # noqa: SLF001 (checked by _fits)
    client = grid._runtime_client  # noqa: SLF001
    try:
        res = client.PullMessages(PullAppMessagesRequest(message_ids=list(message_ids)))
    except httpx.HTTPStatusError as err:
        if err.response.status_code == httpx.codes.REQUEST_ENTITY_TOO_LARGE:
            log.error("bouquet: the replies are too large to pull at once (HTTP 413)")
            return []
        raise
    out: list[Message] = []
    for proto, tree in zip(res.messages_list, res.message_object_trees, strict=True):
        msg_id = proto.metadata.message_id
        try:
            contents = pull_objects([t.object_id for t in iterate_object_tree(tree)],
                                    pull_object_fn=make_pull_object_fn_protobuf(
                                        pull_object_protobuf=client.PullObject, node=grid.node, run_id=run_id),
                                    initial_backoff=first_retry, backoff_cap=longest_retry)
        except ObjectPullError as err:  # as Flower does: an error reply for that message
            meta = Metadata(run_id=run_id, message_id="", src_node_id=grid.node.node_id,
                            dst_node_id=grid.node.node_id, message_type=SYSTEM_MESSAGE_TYPE, group_id="", ttl=0,
                            reply_to_message_id=proto.metadata.reply_to_message_id, created_at=now().timestamp())
            out.append(make_message(metadata=meta, error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=(
                f"Reply message objects are unavailable. {err}"))))
            continue
        client.ConfirmMessageReceived(ConfirmMessageReceivedRequest(node=grid.node, run_id=run_id,
                                                                    message_object_id=msg_id))
        message = inflate_object_from_contents(msg_id, contents)
        message.metadata.__dict__["_message_id"] = msg_id  # as Flower does
        out.append(message)
    return out


def _fits(grid: Grid) -> bool:
    """Whether ``pull_replies`` can pull for ``grid`` (an ``HttpGrid`` with Flower 1.42's attributes)."""
    return isinstance(grid, HttpGrid) and all(hasattr(type(grid), a) or a in vars(grid) for a in _HTTP_GRID_PARTS)


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that polls for replies from 10 ms up to ``longest`` seconds apart."""

    def __init__(self, grid: Grid, longest: float = 0.05):
        self.grid, self.longest = grid, longest
        self.fast_pull = _fits(grid)

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` that are there; missing objects retried after 10 ms (``pull_replies``)."""
        if self.fast_pull:
            return pull_replies(self.grid, message_ids)
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, then return the replies that came within ``timeout`` seconds (None: all of them)."""
        waiting = {m for m in self.push_messages(messages) if m}
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = 0.01
        while waiting:
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            left = None if end is None else end - time.monotonic()
            if not waiting or (left is not None and left <= 0):
                break
            time.sleep(wait if left is None else min(wait, left))
            # replies come in bunches (one round's nodes finish together): after a reply, look again soon
            wait = 0.01 if got else min(2 * wait, self.longest)
        return replies

    def __getattr__(self, name: str):  # anything else a runtime's grid offers
        return getattr(self.grid, name)


def prompt(grid: Grid) -> Grid:
    """``PromptGrid(grid)`` for the deployment runtime's ``HttpGrid``; any other grid as it is."""
    return PromptGrid(grid) if isinstance(grid, HttpGrid) else grid
