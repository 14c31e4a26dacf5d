"""Benchmark-only diagnostic (``benchmarks/flower_overhead.py``, row "Flower's polling waits shortened").

Flower 1.42 waits fixed times in its deployment runtime that no option changes: a SuperNode that found no
message asks the SuperLink again after 3 s (``start_client_internal``: ``time.sleep(3)``), looks for its
ClientApp's reply every 0.5 s, and both the SuperNode and the ServerApp's ``HttpGrid`` retry an object that is
not there yet (a message is visible before its content has arrived) after 1 s, then 2 s... (``pull_objects``:
``PULL_INITIAL_BACKOFF``). To measure what those waits cost, this file, put on ``PYTHONPATH`` with
``BOUQUET_FAST_POLLS=1`` set, caps them in the processes it starts in: every ``time.sleep`` of
``flwr.supernode.start_client_internal`` at ``BOUQUET_FAST_POLLS`` seconds (if a number, else 0.05), and the
first object retry at 10 ms in the SuperNode and the ServerApp. Nothing else changes. Not for production: it
edits Flower 1.42's module globals, and a SuperNode that polls every 50 ms sends 20 requests a second.
"""

import functools
import os
import sys
import time

_SETTING = os.environ.get("BOUQUET_FAST_POLLS", "")
_PROGRAM = os.path.basename(sys.argv[0]) if sys.argv else ""


class _CappedTime:
    """The ``time`` module with ``sleep`` capped at ``cap`` seconds."""

    def __init__(self, cap: float):
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def _patch() -> None:
    try:
        cap = float(_SETTING)
    except ValueError:
        cap = 0.05
    if _PROGRAM == "flower-supernode":
        import flwr.supernode.start_client_internal as node

        assert node.time is time, "flwr.supernode.start_client_internal changed: not Flower 1.42"
        node.time = _CappedTime(cap)
        node.pull_objects = functools.partial(node.pull_objects, initial_backoff=0.01, backoff_cap=0.5)
    elif _PROGRAM == "flwr-serverapp":
        import flwr.superlink.grid.http_grid as grid

        grid.pull_objects = functools.partial(grid.pull_objects, initial_backoff=0.01, backoff_cap=0.5)


if _SETTING:
    _patch()
