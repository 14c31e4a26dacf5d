"""``bouquet supernode``: Flower 1.42's ``flower-supernode`` with its fixed waits made options.

Flower 1.42's SuperNode (``flwr.supernode.start_client_internal``) waits fixed times that no option changes:

- ``--idle-wait``: after asking the SuperLink for a message and finding none, it sleeps 3 s
  (``start_client_internal``: ``time.sleep(3)``) before asking again. In a round the server sends the next
  message only when every node has replied, so a node usually finds nothing at its first ask: about 3 s per
  message hop, 2 per round (train, evaluate).
- ``--busy-wait`` and ``--busy-window``: for ``--busy-window`` seconds after the node handled a message (within a
  run, when the next message is due soon) it asks again after ``--busy-wait`` seconds instead of the idle wait.
  Unset, the idle wait applies throughout, as in Flower.
- ``--reply-wait``: while its ClientApp works it looks for the reply every 0.5 s (``_push_messages``).
- ``--object-retry``: an object of a message that is not on the SuperLink yet (a message is listed before its
  content has arrived) is asked for again after 1 s, 2 s, ... up to 10 s (``pull_objects``,
  ``PULL_INITIAL_BACKOFF``); with this option after the given seconds, doubling up to 1 s.

The defaults are Flower's (3, 0.5, 1). What a shorter wait costs: a SuperNode waiting for a message sends the
SuperLink ``1 / wait`` requests a second (0.33 with Flower's 3 s, 5 with 0.2 s, 50 with 0.02 s), each a
``PullMessages`` call the SuperLink answers: with a busy window, at that rate only within the window after a
message, at the idle rate otherwise. The reply wait is a check of the node's own memory (CPU only).

This is done by replacing three names in that one module of Flower, in this process only: its ``time`` (an object
whose ``sleep`` turns Flower's 3 s and 0.5 s into the chosen waits and passes any other through), its
``_push_messages`` (Flower's, which runs after every message the node pulled, wrapped to note the time for the
busy window) and its ``pull_objects`` (the same function with the chosen first retry). All depend on Flower's
source, so ``check_flower`` refuses to start unless the installed Flower is a version this was written against, and its
module still has exactly those sleeps and names. Every other argument goes to ``flower-supernode`` unchanged::

    bouquet supernode --busy-wait 0.05 --busy-window 10 --reply-wait 0.02 --object-retry 0.01 -- \\
        --insecure --superlink 127.0.0.1:9092 --isolation process --port 9094
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import flwr
import flwr.supernode.start_client_internal as flower_node
from flwr.supercore.inflatable import inflatable_utils
from flwr.supernode.cli.flower_supernode import flower_supernode

from .node_runtime import NodeStateBox
from .node_worker import start_in_node

#: Flower versions whose SuperNode module this patches (checked with ``check_flower``)
SUPPORTED = ("1.42.0",)
_IDLE, _REPLY = 3, 0.5  # Flower 1.42's fixed sleeps in start_client_internal.py
_SLEEPS = {"time.sleep(3)": 1, "time.sleep(0.5)": 2}
_WRAPPED = "__bouquet_wrapped__"


@dataclass(frozen=True)
class Waits:
    """A SuperNode's waits in seconds; the defaults are Flower 1.42's."""

    idle: float = 3.0
    reply: float = 0.5
    object_retry: float = 1.0
    busy: float | None = None  # the wait within ``window`` seconds after a message (None: ``idle``)
    window: float = 10.0

    def args(self) -> list[str]:
        """As ``bouquet supernode`` options."""
        busy = [] if self.busy is None else ["--busy-wait", str(self.busy), "--busy-window", str(self.window)]
        return ["--idle-wait", str(self.idle), *busy, "--reply-wait", str(self.reply), "--object-retry",
                str(self.object_retry)]


#: Flower's own waits
FLOWER = Waits()
#: short waits for a SuperNode beside a node worker (``LocalFederation(workers=True)``): 20 requests a second for
#: 10 s after a message, Flower's 0.33 a second otherwise
SHORT = Waits(idle=3.0, reply=0.02, object_retry=0.01, busy=0.05, window=10.0)


class PacedTime:
    """The ``time`` module, but ``sleep(3)`` sleeps ``idle`` seconds (``busy`` within ``window`` seconds after
    ``handled()``) and ``sleep(0.5)`` sleeps ``reply`` seconds, or until ``replied`` is set (a worker in this
    process pushed a reply)."""

    def __init__(self, idle: float, reply: float, busy: float | None = None, window: float = 10.0,
                 replied: threading.Event | None = None):
        self.idle, self.reply, self.busy, self.window, self.replied = idle, reply, busy, window, replied
        self.last = -float("inf")  # time.monotonic() of the last message handled

    def handled(self) -> None:
        """A message was handled now: the next ``window`` seconds are busy."""
        self.last = time.monotonic()

    def idle_wait(self) -> float:
        """The wait after finding no message, now."""
        busy = self.busy is not None and time.monotonic() - self.last < self.window
        return self.busy if busy else self.idle

    def sleep(self, seconds: float) -> None:
        if seconds == _REPLY and self.replied is not None:
            self.replied.wait(self.reply)
            self.replied.clear()  # Flower looks for the reply right after this sleep
            return
        time.sleep(self.idle_wait() if seconds == _IDLE else self.reply if seconds == _REPLY else seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


def check_flower() -> None:
    """Raise ``RuntimeError`` (one line) unless the installed Flower's SuperNode is the one ``apply`` patches."""
    if flwr.__version__ not in SUPPORTED:
        raise RuntimeError(f"bouquet supernode: error: Flower {flwr.__version__} is installed; its SuperNode waits are "
                           f"patched for Flower {', '.join(SUPPORTED)} only (use flower-supernode)")
    source = inspect.getsource(flower_node)
    problems = [f"{call} {source.count(call)} times, not {n}" for call, n in _SLEEPS.items() if source.count(call) != n]
    if source.count("time.sleep(") != sum(_SLEEPS.values()):
        problems.append(f"{source.count('time.sleep(')} time.sleep calls")
    if flower_node.time is not time and not isinstance(flower_node.time, PacedTime):
        problems.append("its time is not the time module")
    pull = getattr(flower_node, "pull_objects", None)
    base = pull.func if isinstance(pull, functools.partial) else pull
    if base is not inflatable_utils.pull_objects or "initial_backoff" not in inspect.signature(base).parameters:
        problems.append("its pull_objects is not inflatable_utils.pull_objects(..., initial_backoff)")
    push = getattr(flower_node, "_push_messages", None)
    if not callable(push) or "object_store" not in inspect.signature(getattr(push, _WRAPPED, push)).parameters:
        problems.append("it has no _push_messages(state, object_store, ...)")
    pull = getattr(flower_node, "_pull_and_store_message", None)
    if not callable(pull) or not {"state", "object_store"} <= set(inspect.signature(getattr(pull, _WRAPPED,
                                                                                         pull)).parameters):
        problems.append("it has no _pull_and_store_message(state, object_store, ...)")
    if "state=state" not in source:
        problems.append("it does not pass its NodeState by keyword")
    if problems:
        raise RuntimeError(f"bouquet supernode: error: flwr.supernode.start_client_internal is not what this patches "
                           f"({'; '.join(problems)}); use flower-supernode")


def apply(waits: Waits, arrived: threading.Event | None = None, replied: threading.Event | None = None,
          node_state: NodeStateBox | None = None) -> None:
    """Give this process's Flower SuperNode the ``waits`` (after ``check_flower``). ``arrived`` is set whenever the
    node stored a message (its task can be claimed); a set ``replied`` ends the reply wait early; ``node_state``
    receives the node's ``NodeState`` at its first pull (for a worker thread that calls its handlers)."""
    check_flower()
    paced = PacedTime(waits.idle, waits.reply, waits.busy, waits.window, replied)
    flower_node.time = paced
    push = getattr(flower_node._push_messages, _WRAPPED, flower_node._push_messages)
    pull = getattr(flower_node._pull_and_store_message, _WRAPPED, flower_node._pull_and_store_message)

    @functools.wraps(push)
    def push_after_message(*args, **kwargs):
        paced.handled()
        return push(*args, **kwargs)

    @functools.wraps(pull)
    def pull_and_tell(*args, **kwargs):
        if node_state is not None:
            node_state.put(kwargs["state"])
        run_id = pull(*args, **kwargs)
        if run_id is not None and arrived is not None:
            arrived.set()
        return run_id

    setattr(push_after_message, _WRAPPED, push)
    setattr(pull_and_tell, _WRAPPED, pull)
    flower_node._push_messages = push_after_message
    flower_node._pull_and_store_message = pull_and_tell
    flower_node.pull_objects = functools.partial(inflatable_utils.pull_objects, initial_backoff=waits.object_retry,
                                                 backoff_cap=max(1.0, waits.object_retry))


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0 and <= 3600 seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bouquet supernode", add_help=False, description="Flower's flower-supernode "
                                "with its fixed waits as options; every other argument goes to flower-supernode.")
    p.add_argument("--idle-wait", type=_seconds, default=FLOWER.idle, metavar="S", help="seconds before asking "
                   "the SuperLink again after finding no message (Flower: 3; costs 1/S requests a second at idle)")
    p.add_argument("--busy-wait", type=_seconds, metavar="S", help="seconds before asking again within the busy "
                   "window after a message (default: the idle wait; costs 1/S requests a second in the window)")
    p.add_argument("--busy-window", type=_seconds, default=10.0, metavar="S",
                   help="seconds after a message during which --busy-wait applies (default 10)")
    p.add_argument("--reply-wait", type=_seconds, default=FLOWER.reply, metavar="S",
                   help="seconds between looks for the ClientApp's reply (Flower: 0.5)")
    p.add_argument("--object-retry", type=_seconds, default=FLOWER.object_retry, metavar="S",
                   help="first retry of a message object not on the SuperLink yet, doubling up to 1 s (Flower: 1)")
    p.add_argument("--worker", action="store_true", help="run the node worker (bouquet node-worker) in this process, "
                   "woken when a message arrives; implies --isolation process")
    p.add_argument("--preload", action="append", default=[], metavar="MODULE",
                   help="with --worker: import MODULE at start (e.g. bouquet.app.flower_apps; repeatable)")
    p.add_argument("--worker-over-http", action="store_true", help="with --worker: call the node's Runtime API "
                   "over HTTP as a separate worker does (default: its handlers, in-process)")
    return p


def _worker_in_node(rest: list[str], preload: list[str], replied: threading.Event,
                    node_state: NodeStateBox | None) -> tuple[list[str], threading.Event]:
    """Start a node worker thread for the SuperNode that ``rest`` (Flower's arguments) describes, on its Runtime
    API (``--host``/``--port``, TLS when ``--ssl-certfile``, ``--superexec-auth-secret-file``), or on its handlers
    in-process when ``node_state`` is given. Returns ``rest`` with ``--isolation process`` and the event the
    SuperNode sets when a message arrived."""
    from flwr.supercore.auth import load_superexec_auth_secret
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    given = _parse_args_run_supernode().parse_args(rest)  # Flower's own parser: its errors, its defaults
    if "--isolation" not in rest:
        rest = [*rest, "--isolation", "process"]
    elif given.isolation != "process":
        raise RuntimeError(f"bouquet supernode: error: --worker runs the ClientApps itself; it needs --isolation "
                           f"process, not {given.isolation}")
    host = "127.0.0.1" if given.host in ("", "0.0.0.0", "::") else given.host
    insecure = given.ssl_certfile is None
    certs = None
    if not insecure and given.ssl_ca_certfile:
        certs = Path(given.ssl_ca_certfile).expanduser().read_bytes()
    secret = load_superexec_auth_secret(secret_file=given.superexec_auth_secret_file)
    arrived = threading.Event()
    start_in_node(f"{host}:{given.port}", insecure=insecure, root_certificates=certs, auth_secret=secret,
                  wake=arrived, replied=replied, preload=preload, node_state=node_state)
    return rest, arrived


def main(argv: Sequence[str] | None = None) -> int:
    """``bouquet supernode [--idle-wait S] [--reply-wait S] [--object-retry S] [--] FLOWER-SUPERNODE-ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    ours, rest = parser.parse_known_args(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        print()
    waits = Waits(ours.idle_wait, ours.reply_wait, ours.object_retry, ours.busy_wait, ours.busy_window)
    arrived = replied = box = None
    try:
        check_flower()
        if ours.worker:
            replied = threading.Event()
            box = None if ours.worker_over_http else NodeStateBox()
            rest, arrived = _worker_in_node(rest, ours.preload, replied, box)
        apply(waits, arrived, replied, box)
    except (RuntimeError, ValueError, OSError) as err:
        print(err if str(err).startswith("bouquet") else f"bouquet supernode: error: {err}", file=sys.stderr)
        return 2
    busy = "" if waits.busy is None else f" ({waits.busy} s for {waits.window} s after a message)"
    print(f"bouquet supernode: Flower {flwr.__version__} SuperNode, idle wait {waits.idle} s{busy}, reply wait "
          f"{waits.reply} s, first object retry {waits.object_retry} s{', node worker in this process' * ours.worker}",
          file=sys.stderr, flush=True)
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0
