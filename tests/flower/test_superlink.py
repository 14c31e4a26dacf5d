"""``bouquet superlink``: Flower's SuperLink middleware gated by path, refused on a Flower it was not written for.

The deployment tests (``test_deployment.py``: TLS with SuperNode authentication refusing an unknown node, kill and
resume, Flower's stock apps) all run on the gated SuperLink, ``LocalFederation``'s default."""

import asyncio

import flwr
import flwr.superlink.main as flower_link
import pytest
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

from bouquet.flower import superlink


def test_the_installed_flower_builds_the_stack_the_gates_expect():
    superlink.check_flower()
    stack = flower_link._get_middleware()
    gated = superlink.gated(stack)
    assert len(gated) == len(stack)
    for before, after in zip(stack, gated, strict=True):
        if before.cls.__name__ in superlink.GATES:
            assert after.cls is superlink.PathGate and after.kwargs["layer"] is before
        else:
            assert after is before  # error translation and protobuf layers untouched
    assert sum(m.cls is superlink.PathGate for m in gated) == 6


class _Seen(BaseHTTPMiddleware):
    """A layer that records the paths it dispatched."""

    def __init__(self, app, seen: list):
        super().__init__(app)
        self.seen = seen

    async def dispatch(self, request, call_next):
        self.seen.append(request.url.path)
        return await call_next(request)


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


def _call(app, path: str) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [], "scheme": "http", "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2),
             "root_path": "", "http_version": "1.1"}
    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize("name, acts_on, passes", [
    ("ControlAuthenticationMiddleware", "/v1/control/list-runs", "/v1/fleet/pull-messages"),
    ("NodeAuthMiddleware", "/v1/fleet/pull-messages", "/v1/runtime/pull-messages"),
])
def test_a_gate_runs_its_layer_on_the_paths_it_acts_on_and_only_there(name, acts_on, passes):
    seen: list = []
    layer = Middleware(_Seen, seen=seen)
    gate = superlink.PathGate(_ok, layer, superlink.GATES[name])
    for path in (acts_on, passes):
        sent = _call(gate, path)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert sent[0]["status"] == 200 and body == path.encode()  # the same response either way
    assert seen == [acts_on]


def test_the_fleet_event_log_is_kept_when_a_plugin_is_installed():
    class App:
        class state:
            fleet_event_log_plugin = object()

    fleet = {"path": "/v1/fleet/push-messages", "app": App}
    assert superlink.GATES["FleetEventLogMiddleware"](fleet)
    App.state.fleet_event_log_plugin = None
    assert not superlink.GATES["FleetEventLogMiddleware"](fleet)
    assert superlink.GATES["FleetEventLogMiddleware"]({"path": "/v1/fleet/x"})  # no app known: keep the layer


def test_refuses_another_flower_version(monkeypatch, capsys):
    monkeypatch.setattr(flwr, "__version__", "9.9.9")
    assert superlink.main(["--insecure"]) == 2
    assert "Flower 9.9.9 is installed" in capsys.readouterr().err


def test_refuses_a_changed_middleware_stack(monkeypatch):
    monkeypatch.setattr(flower_link, "_get_middleware", lambda: [Middleware(BaseHTTPMiddleware, dispatch=None)])
    with pytest.raises(RuntimeError, match="not the"):
        superlink.check_flower()
