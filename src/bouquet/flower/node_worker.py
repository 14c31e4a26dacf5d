"""A long-lived node worker: one process that runs a SuperNode's ClientApp tasks, message after message.

Flower 1.42's SuperNode (``--isolation subprocess``, the default) starts ``flower-superexec``, which starts a
new ``flwr-clientapp`` process for every message: each imports torch and the app and builds its task again
(seconds per message, docs/flower.md "Performance"). Started with ``--isolation process``, a SuperNode runs no
ClientApp itself; it waits for an outside process to claim its tasks on its Runtime API. This worker is that
process, and it stays::

    flower-supernode --insecure --superlink HOST:9092 --isolation process --port 9094 ...
    bouquet node-worker --runtime-api-address 127.0.0.1:9094 --insecure

It does in one process what ``flower-superexec`` and one ``flwr-clientapp`` per message do
(``flwr.supercore.superexec.run_superexec``, ``flwr.supernode.runtime.run_clientapp``): poll ``AcquireTask``
for a ClientApp task and its token; with that token pull the task input (message, context, run, FAB, with
Flower's own ``pull_task_input``); install the FAB and load its ClientApp once per FAB hash; call it; push the
reply (an ``Error`` reply when the app raised, as ``run_clientapp`` does) and the final context and status; then
the next task. Modules stay imported and the app's own caches stay warm (bouquet's ClientApp keeps the built
job per run: ``bouquet.app.flower_job``). Tasks run one at a time; a task heartbeat runs while one does.

Not done: installing an app's dependencies (its code must be installed, as bouquet's is), and reloading an
app module that changed on disk (restart the worker after upgrading the app's package).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import RetryInvoker, exponential
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from .node_runtime import InNodeRuntime, NodeStateBox

log = logging.getLogger("bouquet.node_worker")

#: the Runtime API method SuperExec authentication protects (``run_superexec._SUPEREXEC_AUTH_METHODS``)
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
#: how long a task's Runtime API calls are retried on transport errors (a SuperNode restarting) before it is given up
TASK_RETRY_SECONDS = 60.0


def _task_retry() -> RetryInvoker:
    """Retries for a task's calls: transport errors only, for ``TASK_RETRY_SECONDS``. Flower's own HTTP invoker
    raises SIGINT on a 401 (its task processes exit then); a worker must outlive a refused token."""
    return RetryInvoker(lambda: exponential(max_delay=5), httpx.TransportError, max_tries=None,
                        max_time=TASK_RETRY_SECONDS)


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """The task's message, context, run and FAB: ``run_clientapp.pull_task_input`` with a 10 ms first retry
    instead of 1 s. A task can be claimed before its SuperNode has all of the message's objects from the
    SuperLink; a fresh process took longer than that to start, a warm worker would wait a second per message."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=0.01, backoff_cap=0.5)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does: the deflated message lacks its id
    return message, context, run, fab


def _heartbeat(client: RuntimeHttpClient) -> Callable[[], bool]:
    """The task heartbeat: False (retried with backoff) when the SuperNode is unreachable. Flower's version raises
    SIGINT when the SuperNode refuses it, which would end the worker; this one logs and lets the task finish.
    The first beat, due the moment the task starts, is skipped: the claim just told the SuperNode the task is
    alive, and that beat would be one more request competing with the task's pull (the next is due in ~20 s,
    within Flower's 60 s patience)."""
    req = SendTaskHeartbeatRequest()
    first = [True]

    def beat() -> bool:
        if first[0]:
            first[0] = False
            return True
        try:
            res = client.SendTaskHeartbeat(req)
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as err:
            log.warning("task heartbeat refused (HTTP %s)", err.response.status_code)
            return True
        if not res.success:
            log.warning("task heartbeat not acknowledged: the SuperNode no longer knows this task")
        return True

    return beat


class NodeWorker:
    """Claims and runs the ClientApp tasks of one SuperNode (``--isolation process``), one at a time, in-process."""

    def __init__(self, runtime_api_address: str, *, insecure: bool = True, root_certificates: bytes | None = None,
                 auth_secret: bytes | None = None, poll_interval: float = 0.05,
                 wake: threading.Event | None = None, replied: threading.Event | None = None,
                 node_state: NodeStateBox | None = None):
        self.address, self.insecure, self.certs = runtime_api_address, insecure, root_certificates
        #: in the SuperNode's own process: its state, so Runtime API calls skip HTTP (``node_runtime``)
        self.node_state = node_state
        self.poll_interval = poll_interval
        #: in the SuperNode's own process (``bouquet supernode --worker``): set when a message arrived, so the
        #: worker claims its task at once instead of at its next poll (``poll_interval`` is then only a fallback)
        self.wake = wake
        #: set once a reply is pushed, so the SuperNode sends it on at once instead of at its next look
        self.replied = replied
        #: ClientApp per FAB hash (the FAB installed once)
        self.apps: dict[str, tuple[ClientApp, Path]] = {}
        self.load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        self.tasks = self.failed = 0
        self.auth_secret = auth_secret
        self.poller = self._client()

    def _client(self, token: str | None = None) -> RuntimeHttpClient:
        """The claim poller's client (no ``token``: SuperExec, with its secret) or a task's (with its token and
        retries); in the SuperNode's own process, its handlers called directly instead of HTTP."""
        if self.node_state is not None:
            return InNodeRuntime(self.node_state, token)  # type: ignore[return-value]  # the same methods
        if token is None:
            auth = [] if self.auth_secret is None else [SuperExecAuthHttpInterceptor(
                master_secret=self.auth_secret, protected_methods={_ACQUIRE})]
            interceptors, retry = [RuntimeVersionHttpInterceptor(component_name="SuperExec"), *auth], None
        else:
            interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                            RuntimeTokenHttpInterceptor(token)]
            retry = _task_retry()
        return RuntimeHttpClient.from_server_address(server_address=self.address, insecure=self.insecure,
                                                     root_certificates=None if self.insecure else self.certs,
                                                     interceptors=interceptors, retry_invoker=retry)

    def acquire(self) -> str | None:
        """Claim the oldest pending ClientApp task of the SuperNode: its token, or None when there is none."""
        res = self.poller.AcquireTask(AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)]))
        return res.token if res.HasField("task") and res.token else None

    def app(self, run: Run, fab: Fab) -> ClientApp:
        """The run's ClientApp: its FAB installed and loaded on first use, then reused. The app's directory goes
        first on ``sys.path`` for the task (what a fresh ``flwr-clientapp`` process of this FAB would see)."""
        if fab.hash_str not in self.apps:
            where = install_from_fab(fab.content, skip_prompt=True)
            self.apps[fab.hash_str] = (self.load(run.fab_id, run.fab_version, fab.hash_str), Path(where))
        app, where = self.apps[fab.hash_str]
        entry = str(where.absolute())
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
        return app

    def run_task(self, token: str) -> bool:
        """Run one claimed task (``run_clientapp`` without its process exit); True when the ClientApp succeeded."""
        client = self._client(token)
        beat = HeartbeatSender(_heartbeat(client))
        beat.start()
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        start = time.perf_counter()
        ran = pulled = start
        try:
            message, context, run, fab = pull_task_input(client)
            pulled = time.perf_counter()
            reply = self.app(run, fab)(message=message, context=context)
            ran = time.perf_counter()
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the worker lives on; the server gets an Error reply, as from run_clientapp
            ran = time.perf_counter()
            code, details = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex)}:<'{ex}'>"
            if isinstance(ex, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                details = "An exception was raised when attempting to load `ClientApp`"
            log.error("ClientApp raised an exception", exc_info=ex)
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                    if self.replied is not None:
                        self.replied.set()
            except Exception as ex:  # e.g. the run was stopped meanwhile (HTTP 403)
                log.error("failed to push the reply message: %s", ex)
                status = SubStatus.FAILED
            push_task_output(client=client, context=context, sub_status=status, details=details)  # logs HTTP errors
            if beat.is_running:
                beat.stop()
            client.close()
        self.tasks += 1
        self.failed += status != SubStatus.COMPLETED
        kind = message.metadata.message_type if message is not None else "?"
        log.info("task %d (%s): %s; pull %.3f s, app %.3f s, push %.3f s", self.tasks, kind, status,
                 pulled - start, ran - pulled, time.perf_counter() - ran)
        return status == SubStatus.COMPLETED

    def serve(self, max_tasks: int | None = None) -> None:
        """Claim and run tasks until stopped (SIGTERM/SIGINT), or until ``max_tasks`` tasks ran."""
        down = False
        while max_tasks is None or self.tasks < max_tasks:
            if self.wake is not None:
                self.wake.clear()  # before the claim: a message stored after this sets it again
            try:
                token = self.acquire()
            except httpx.HTTPError as err:  # the SuperNode is not up yet, or restarting: keep trying
                status = err.response.status_code if isinstance(err, httpx.HTTPStatusError) else None
                if status in (401, 403):  # a wrong or missing SuperExec secret: a setup error
                    raise SystemExit(f"bouquet node-worker: error: the SuperNode at {self.address} refused the "
                                     f"task claim (HTTP {status}); check --superexec-auth-secret-file") from err
                if not down:
                    log.warning("SuperNode Runtime API %s unreachable (%s); retrying", self.address, err)
                down = True
                time.sleep(max(self.poll_interval, 0.5))
                continue
            if down:
                log.info("connected to the SuperNode Runtime API %s", self.address)
                down = False
            if token is None:
                if self.wake is not None:
                    self.wake.wait(self.poll_interval)
                else:
                    time.sleep(self.poll_interval)
            else:
                self.run_task(token)  # then look for the next task at once

    def close(self) -> None:
        self.poller.close()


def start_in_node(address: str, *, insecure: bool, root_certificates: bytes | None, auth_secret: bytes | None,
                  wake: threading.Event, replied: threading.Event, preload: Sequence[str] = (),
                  node_state: NodeStateBox | None = None) -> threading.Thread:
    """Serve the SuperNode's tasks from a daemon thread of the SuperNode's own process (``bouquet supernode
    --worker``): woken by ``wake`` when a message arrives, ``replied`` set when a reply is pushed, ``poll_interval``
    0.5 s only as a fallback. One process per node instead of two, and no claim polls between messages. With
    ``node_state`` (the SuperNode's, filled by its loop) the Runtime API calls go to its handlers in-process."""
    _worker_logging()
    for module in preload:
        importlib.import_module(module)
    worker = NodeWorker(address, insecure=insecure, root_certificates=root_certificates, auth_secret=auth_secret,
                        poll_interval=0.5, wake=wake, replied=replied, node_state=node_state)

    def serve() -> None:
        log.info("serving ClientApp tasks of the SuperNode at %s from its own process (Runtime API %s)", address,
                 "over HTTP" if node_state is None else "handlers called in-process")
        try:
            worker.serve()
        finally:
            worker.close()

    thread = threading.Thread(target=serve, name="bouquet-node-worker", daemon=True)
    thread.start()
    return thread


def _worker_logging() -> None:
    """The worker's lines (a line per task) on stderr, httpx's not (a line per poll)."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s bouquet node-worker: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bouquet node-worker", description="Run a SuperNode's ClientApp tasks in one "
                                "long-lived process (the SuperNode started with --isolation process).")
    p.add_argument("--runtime-api-address", "--clientappio-api-address", dest="address", default="127.0.0.1:9094",
                   help="the SuperNode's Runtime API, host:port (flower-supernode --port; default 127.0.0.1:9094)")
    p.add_argument("--insecure", action="store_true", help="connect to the Runtime API without TLS")
    p.add_argument("--root-certificates", metavar="PEM", help="CA certificate that signed the SuperNode's Runtime "
                   "API certificate (flower-supernode --ssl-ca-certfile); without --insecure and this: system CAs")
    p.add_argument("--superexec-auth-secret-file", metavar="FILE", help="the SuperNode's "
                   "--superexec-auth-secret-file (authenticates task claims)")
    p.add_argument("--poll-interval", type=float, default=0.05, metavar="S",
                   help="seconds between task polls when idle (default 0.05)")
    p.add_argument("--parent-pid", type=int, metavar="PID", help="exit when this process (the SuperNode) exits")
    p.add_argument("--preload", action="append", default=[], metavar="MODULE", help="import MODULE at start, so "
                   "the first message does not wait for it (e.g. bouquet.app.flower_apps; repeatable)")
    p.add_argument("--max-tasks", type=int, metavar="N", help="exit after N tasks (tests)")
    return p


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """``bouquet node-worker``: serve the SuperNode's ClientApp tasks until stopped."""
    args = _parser().parse_args(argv)
    _worker_logging()
    if args.insecure and args.root_certificates:
        raise SystemExit("bouquet node-worker: error: --insecure and --root-certificates exclude each other")
    certs = None
    if args.root_certificates:
        path = Path(args.root_certificates).expanduser()
        if not path.is_file():
            raise SystemExit(f"bouquet node-worker: error: --root-certificates {path}: no such file")
        certs = path.read_bytes()
    try:
        secret = load_superexec_auth_secret(secret_file=args.superexec_auth_secret_file)
    except ValueError as err:
        raise SystemExit(f"bouquet node-worker: error: --superexec-auth-secret-file: {err}") from err
    if args.poll_interval <= 0:
        raise SystemExit("bouquet node-worker: error: --poll-interval must be > 0 seconds")
    signal.signal(signal.SIGTERM, _stop)
    for module in args.preload:
        importlib.import_module(module)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)  # SIGINT when the SuperNode is gone
    worker = NodeWorker(args.address, insecure=args.insecure, root_certificates=certs, auth_secret=secret,
                        poll_interval=args.poll_interval)
    log.info("serving ClientApp tasks of the SuperNode at %s", args.address)
    try:
        worker.serve(args.max_tasks)
    except KeyboardInterrupt:
        pass
    finally:
        worker.close()
        log.info("stopped after %d tasks (%d failed)", worker.tasks, worker.failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
