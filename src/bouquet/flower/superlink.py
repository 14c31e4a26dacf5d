"""``bouquet superlink``: Flower 1.42's ``flower-superlink`` with its pass-through middleware skipped by path.

Flower 1.42's SuperLink puts every HTTP request through eight Starlette ``BaseHTTPMiddleware`` layers (each a task
group and a pair of memory streams per request). For most requests most of them do nothing: four act only on
Control API paths (``/v1/control/...``: authentication, licence, event log, no-cache headers), the SuperNode
authentication only on Fleet paths (``/v1/fleet/...``), the Fleet event log only on Fleet paths when an event-log
plugin is installed; otherwise their ``dispatch`` is ``return await call_next(request)``. A deployment's round is
about 60 requests through the one SuperLink process, all of them Fleet (SuperNodes) or Runtime (the ServerApp)
calls, so those layers are most of its CPU (benchmarks/RESULTS.md, "Where a deployment round goes").

Here each of those six layers sits behind a pure ASGI gate (``PathGate``) that hands a request it would pass
through straight to the next layer and every other request to the layer itself: the same responses, the same
checks on the requests they apply to. The error translation and protobuf layers, and any extension's middleware,
stay as they are. ``check_flower`` refuses to start unless the installed Flower builds exactly the stack this was
written against. Every argument goes to ``flower-superlink`` unchanged::

    bouquet superlink -- --insecure --host 127.0.0.1 --port 9093
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import flwr
import flwr.superlink.main as flower_link
from flwr.superlink.cli import flower_superlink
from starlette.middleware import Middleware

#: Flower versions whose SuperLink middleware stack this gates (checked with ``check_flower``)
SUPPORTED = ("1.42.0",)
_CONTROL, _FLEET = "/v1/control/", "/v1/fleet/"

Scope = dict[str, Any]


def _control(scope: Scope) -> bool:
    return scope["path"].startswith(_CONTROL)


def _fleet(scope: Scope) -> bool:
    return scope["path"].startswith(_FLEET)


def _fleet_logged(scope: Scope) -> bool:
    app = scope.get("app")
    plugin = getattr(getattr(app, "state", None), "fleet_event_log_plugin", True)  # unknown app: keep the layer
    return _fleet(scope) and plugin is not None


#: Flower's middleware classes by name, with the requests each acts on (all others it passes through unchanged)
GATES: dict[str, Callable[[Scope], bool]] = {
    "ControlSensitiveResponseMiddleware": _control,
    "ControlAuthenticationMiddleware": _control,
    "ControlLicenseMiddleware": _control,
    "ControlEventLogMiddleware": _control,
    "NodeAuthMiddleware": _fleet,
    "FleetEventLogMiddleware": _fleet_logged,
}
#: the stack ``flwr.superlink.main._get_middleware`` returns in Flower 1.42 (after any extension's), by class name
FLOWER_STACK = ("ControlSensitiveResponseMiddleware", "BaseHTTPMiddleware", "ControlAuthenticationMiddleware",
                "ControlLicenseMiddleware", "ProtobufTranslationMiddleware", "ControlEventLogMiddleware",
                "NodeAuthMiddleware", "FleetEventLogMiddleware")


class PathGate:
    """ASGI middleware: HTTP requests that ``applies`` accepts go through ``layer`` (a Starlette ``Middleware``),
    every other request straight to ``app``, the layer's own next app."""

    def __init__(self, app: Any, layer: Middleware, applies: Callable[[Scope], bool]):
        self.app, self.applies = app, applies
        self.layer = layer.cls(app, *layer.args, **layer.kwargs)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.applies(scope):
            await self.app(scope, receive, send)
        else:
            await self.layer(scope, receive, send)


def gated(stack: Sequence[Middleware]) -> list[Middleware]:
    """``stack`` with each layer named in ``GATES`` behind its ``PathGate``; the order is kept."""
    return [Middleware(PathGate, layer=m, applies=GATES[m.cls.__name__]) if m.cls.__name__ in GATES else m
            for m in stack]


def check_flower() -> None:
    """Raise ``RuntimeError`` (one line) unless the installed Flower's SuperLink builds the stack ``gated`` expects."""
    if flwr.__version__ not in SUPPORTED:
        raise RuntimeError(f"bouquet superlink: error: Flower {flwr.__version__} is installed; its middleware is gated "
                           f"for Flower {', '.join(SUPPORTED)} only (use flower-superlink)")
    names = tuple(m.cls.__name__ for m in flower_link._get_middleware())
    if names[-len(FLOWER_STACK):] != FLOWER_STACK:
        raise RuntimeError(f"bouquet superlink: error: Flower's SuperLink middleware is {list(names)}, not the "
                           f"{list(FLOWER_STACK)} this gates (use flower-superlink)")


def apply() -> None:
    """Make Flower's SuperLink app, built later in this process, use the gated stack."""
    flower_get = flower_link._get_middleware
    flower_link._get_middleware = lambda: gated(flower_get())


def main(argv: Sequence[str] | None = None) -> int:
    """``bouquet superlink [--] FLOWER-SUPERLINK-ARGS``."""
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if "-h" in rest or "--help" in rest:
        print(__doc__.strip().splitlines()[0] + "\n")
    try:
        check_flower()
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 2
    apply()
    print(f"bouquet superlink: Flower {flwr.__version__} SuperLink, {len(GATES)} pass-through middleware layers "
          "skipped by path", file=sys.stderr, flush=True)
    sys.argv = ["flower-superlink", *rest]
    flower_superlink()
    return 0
