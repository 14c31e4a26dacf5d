"""The SuperNode's Runtime API called in-process, for a node worker that is a thread of its SuperNode
(``bouquet supernode --worker``).

A worker beside its SuperNode reaches it over HTTP: claim, pull the task input, pull the message and each of its
objects, push the reply and each object, push the output, about ten requests per task, each through the
SuperNode's uvicorn server on the same cores as the rest of the federation. In the SuperNode's own process the
same calls can go straight to the handlers Flower's Runtime API routes call (``flwr.supernode.servicer.runtime.
runtime_handlers``), with the node's own ``NodeState`` and the task found by its token as the route's
dependency finds it (``state.get_task_by_token``). A handler's ``FlowerError`` becomes the ``httpx.HTTPStatusError``
the HTTP client would have raised (status from Flower's error catalog), so the worker's error handling is the
same either way. What is left out is what only a second process needs: the version check and the SuperExec
secret of a claim (the thread runs inside the process that holds the secret).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
from flwr.supercore.error import FlowerError
from flwr.supercore.error.catalog import API_ERROR_MAP
from flwr.supercore.servicer.runtime import runtime_handlers as core_handlers
from flwr.supernode.servicer.runtime import runtime_handlers as node_handlers

log = logging.getLogger("bouquet.node_worker")
__all__ = ["InNodeRuntime", "NodeStateBox"]

#: the Runtime API calls a ClientApp task makes, by the client method's name: (route path, handler(request,
#: state, task)); ``AcquireTask`` has no task (it hands one out)
_TASK_CALLS: dict[str, tuple[str, Callable[..., Any]]] = {
    "SendTaskHeartbeat": ("/v1/runtime/send-task-heartbeat", core_handlers.send_task_heartbeat),
    "PullTaskInput": ("/v1/runtime/pull-task-input", node_handlers.pull_task_input),
    "PushTaskOutput": ("/v1/runtime/push-task-output", node_handlers.push_task_output),
    "PushObject": ("/v1/runtime/push-object", node_handlers.push_object),
    "PullObject": ("/v1/runtime/pull-object", node_handlers.pull_object),
    "ConfirmMessageReceived": ("/v1/runtime/confirm-message-received", node_handlers.confirm_message_received),
    "PullMessages": ("/v1/runtime/pull-messages", node_handlers.pull_messages),
    "PushMessages": ("/v1/runtime/push-messages", node_handlers.push_messages),
}


class NodeStateBox:
    """The SuperNode's ``NodeState``, handed over by the SuperNode's loop once it has one (its first pull)."""

    def __init__(self) -> None:
        self._state: Any = None
        self._ready = threading.Event()

    def put(self, state: Any) -> None:
        if self._state is None:
            self._state = state
            self._ready.set()

    def get(self) -> Any:
        """The node's state; blocks until the SuperNode has created it."""
        self._ready.wait()
        return self._state


def _status_error(path: str, status: int, detail: str) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", f"inprocess://supernode{path}")
    return httpx.HTTPStatusError(f"{detail} (HTTP {status}, in-process {path})", request=request,
                                 response=httpx.Response(status, request=request))


class InNodeRuntime:
    """A Runtime API client (the methods of ``flwr.supercore.runtime.RuntimeHttpClient`` a ClientApp task uses)
    that calls the SuperNode's handlers in this process. ``token`` is the task's (None for the claim poller)."""

    def __init__(self, box: NodeStateBox, token: str | None = None):
        self.box, self.token = box, token

    def AcquireTask(self, request):  # noqa: N802 - Flower's method names
        return self._call("/v1/runtime/acquire-task", lambda state: node_handlers.acquire_task(request, state))

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        if name not in _TASK_CALLS:
            raise AttributeError(name)
        path, handler = _TASK_CALLS[name]

        def call(request):
            return self._call(path, lambda state: handler(request, state, self._task(path, state)))

        return call

    def _task(self, path: str, state: Any):
        task = state.get_task_by_token(self.token) if self.token else None
        if task is None:  # what the route's token dependency answers
            raise _status_error(path, 401, "Runtime task-token authentication failed")
        return task

    def _call(self, path: str, body: Callable[[Any], Any]):
        try:
            return body(self.box.get())
        except FlowerError as err:
            spec = API_ERROR_MAP.get(err.code)
            raise _status_error(path, spec.http_status_code if spec else 500, err.message) from err
        except httpx.HTTPStatusError:
            raise
        except Exception as err:  # the route would answer 500; the worker handles it as it handles that
            log.error("in-process Runtime API %s failed", path, exc_info=err)
            raise _status_error(path, 500, f"{type(err).__name__}: {err}") from err

    def close(self) -> None:
        """Nothing to close (the HTTP client's ``close``)."""
