"""A ``Grid`` that collects replies promptly.

Flower 1.42's ``send_and_receive`` pushes the messages and then looks for replies every 3 s in the deployment
runtime (``HttpGrid``; 0.1 s in the simulation runtime's ``InMemoryGrid``), so a round of train and evaluate
messages costs at least 6 s however fast the nodes answer. ``PromptGrid`` wraps the deployment's grid and does
the same with Flower's own ``push_messages`` / ``pull_messages``, polling after 10 ms, then doubling up to
``longest`` seconds: a reply is seen at most about as late as it has already taken, and never more than
``longest`` late. Everything else is the wrapped grid's. ``prompt`` wraps only ``HttpGrid``: the simulation
runtime (and test grids) keep their own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import HttpGrid


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that polls for replies from 10 ms up to ``longest`` seconds apart."""

    def __init__(self, grid: Grid, longest: float = 0.2):
        self.grid, self.longest = grid, longest

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
            wait = min(2 * wait, self.longest)
        return replies

    def __getattr__(self, name: str):  # anything else a runtime's grid offers
        return getattr(self.grid, name)


def prompt(grid: Grid) -> Grid:
    """``PromptGrid(grid)`` for the deployment runtime's ``HttpGrid``; any other grid as it is."""
    return PromptGrid(grid) if isinstance(grid, HttpGrid) else grid
