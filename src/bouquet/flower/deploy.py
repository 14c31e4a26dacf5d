"""Start and stop a real Flower federation on this machine: one SuperLink and N SuperNodes.

Every process is started in its own session and stopped by its PID (process group: the
SuperExec/ClientApp children go with it), also on failure (``with LocalFederation(...) as fed``).
Ports are free ones picked by binding port 0. ``FLWR_HOME`` points at a private directory holding
the Flower configuration (a SuperLink connection named ``bouquet``), installed apps and logs.

    with LocalFederation(tmp, num_supernodes=3) as fed:       # or simulation=True, or tls=make_tls(tmp)
        out = fed.run_app(app_dir, {"algorithm": "floral"})   # ``flwr run APP bouquet --stream``

With ``workers=True`` every SuperNode runs ``--isolation process`` with one ``bouquet node-worker`` beside it
(``node_worker``: one long-lived process runs all its ClientApp tasks) instead of Flower's process per message.
``node_waits`` (``supernode.Waits``) starts the SuperNodes with ``bouquet supernode`` and those waits instead of
``flower-supernode`` with Flower's fixed ones; with workers the default is ``supernode.SHORT`` (0.05 s for 10 s
after a message, else Flower's 3 s).
Child processes import bouquet from the same source tree as this process (``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from .credentials import NodeKey, TLSFiles, make_node_keys, make_tls
from .supernode import FLOWER, SHORT, Waits

__all__ = ["LocalFederation", "NodeKey", "TLSFiles", "flwr_run", "free_port", "make_node_keys", "make_tls",
           "process_tree", "stop_process"]

# SuperLinks install an app's dependencies with `uv sync` unless told not to (network; bouquet is installed)
NO_UV_SYNC = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
#: the directory holding this bouquet package: child processes import the same code
_SOURCE = str(Path(__file__).resolve().parents[2])


def free_port() -> int:
    """A TCP port that was free a moment ago (bind port 0 on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """An executable of the running environment (next to the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process (Linux ``/proc``)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def process_tree(pid: int) -> list[int]:
    """``pid``, its descendants, and every process in the sessions they lead.

    SuperLink/SuperNode start SuperExec in a new session, which starts ServerApp/ClientApp and
    simulation (Ray) processes; some outlive their parents, so sessions are followed too.
    """
    table = _proc_table()
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    sessions = {p for p in tree if p in table and table[p][1] == p}
    tree |= {p for p, (_, sid) in table.items() if sid in sessions}
    return sorted(tree)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and every process it started (``process_tree``): SIGTERM, then SIGKILL after ``grace``."""
    tree = process_tree(proc.pid)
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in tree if p != proc.pid):
        time.sleep(0.1)
    for pid in set(tree) | set(process_tree(proc.pid)):
        _signal(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # a process stuck in the kernel
        proc.wait(timeout=grace)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process it started, at once."""
    for pid in process_tree(proc.pid):
        _signal(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class LocalFederation:
    """A SuperLink (deployment or simulation runtime) and N SuperNodes on 127.0.0.1."""

    def __init__(self, workdir: str | Path, num_supernodes: int = 0, *, simulation: bool = False,
                 tls: TLSFiles | None = None, startup_timeout: float = 60.0,
                 node_configs: list[dict] | None = None, node_keys: list[NodeKey] | None = None,
                 database: bool = False, workers: bool = False, worker_poll: float = 0.05,
                 node_waits: Waits | None = None, worker_in_node: bool = False,
                 worker_over_http: bool = False, gated_link: bool = True):
        self.dir = Path(workdir)
        self.home = self.dir / "flwr-home"
        self.logs = self.dir / "logs"
        self.num_supernodes, self.simulation, self.tls = num_supernodes, simulation, tls
        self.startup_timeout, self.node_configs = startup_timeout, node_configs or []
        # with node keys the SuperLink admits only SuperNodes whose public key is registered (needs TLS)
        self.node_keys = node_keys
        # a SuperLink state on disk (registered nodes, runs) survives a SuperLink restart; in memory it does not,
        # and SuperNodes then exit (their heartbeats are refused: 401)
        self.database = self.dir / "superlink-state.db" if database else None
        # one long-lived ``bouquet node-worker`` per SuperNode (``--isolation process``), polling every worker_poll s
        self.use_workers, self.worker_poll = workers, worker_poll
        # with workers: each worker a thread of its SuperNode's process (``bouquet supernode --worker``), woken by
        # the node's messages, instead of a process of its own polling every worker_poll s
        self.worker_in_node = workers and worker_in_node
        # an in-node worker calls its SuperNode's Runtime API handlers directly, or over HTTP as a separate one does
        self.worker_over_http = worker_over_http
        # ``bouquet superlink``: Flower's SuperLink with its pass-through middleware layers skipped by path
        self.gated_link = gated_link
        # the SuperNodes' fixed waits (Flower's 3 s idle poll...): short ones beside workers unless told
        self.node_waits = node_waits if node_waits is not None else SHORT if workers else FLOWER
        self.port = free_port()
        self.superlink: subprocess.Popen | None = None
        self.supernodes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen | None] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_DISABLE_UPDATE_CHECK="1", **NO_UV_SYNC,
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), RAY_DEDUP_LOGS="0")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([_SOURCE, *(p for p in paths if p != _SOURCE)])
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.dir,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def _security(self, server: bool) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        if server:
            return ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert),
                    "--ssl-keyfile", str(self.tls.server_key)]
        return ["--root-certificates", str(self.tls.ca_cert)]

    def write_connection(self) -> Path:
        """``$FLWR_HOME/config.toml`` with the connection ``bouquet`` to this SuperLink (the default)."""
        conn: dict = {"address": self.address}
        if self.tls is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.tls.ca_cert)
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "config.toml"
        path.write_text(tomli_w.dumps({"superlink": {"default": "bouquet", "bouquet": conn}}))
        return path

    def start(self) -> LocalFederation:
        """Start the SuperLink, wait until it accepts connections, then start the SuperNodes."""
        self.write_connection()
        self.start_superlink()
        for key in self.node_keys or []:
            self.register_node(key)
        for i in range(self.num_supernodes):
            self.add_supernode(i, self.num_supernodes)
        return self

    def start_superlink(self) -> subprocess.Popen:
        """Start the SuperLink on this federation's port (again, after ``kill_superlink``) and wait for it."""
        launcher = ([sys.executable, "-m", "bouquet", "superlink", "--"] if self.gated_link
                    else [_bin("flower-superlink")])
        args = [*launcher, *self._security(True), "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if self.simulation:
            args.append("--simulation")
        if self.node_keys is not None:
            args.append("--enable-supernode-auth")
        if self.database is not None:
            args += ["--database", str(self.database)]
        self.superlink = self._spawn("superlink", args)
        self._wait_port(self.port, self.superlink)
        return self.superlink

    def register_node(self, key: NodeKey) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        res = subprocess.run([_bin("flwr"), "supernode", "register", str(key.public), "bouquet"], env=self.env(),
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"flwr supernode register {key.public} failed: {(res.stdout + res.stderr)[-500:]}")

    def kill_superlink(self) -> None:
        """Kill the SuperLink and all it started (its ServerApp too) at once: a crash of the server's machine."""
        assert self.superlink is not None
        _kill_tree(self.superlink)

    def add_supernode(self, partition_id: int, num_partitions: int, index: int | None = None,
                      key: NodeKey | None = None) -> subprocess.Popen:
        """Start one SuperNode serving ``partition_id`` (its own free ClientAppIo/runtime port); with
        ``node_configs``, its entry (e.g. ``data-dir``) is added to the node config. ``index`` replaces the
        SuperNode of that index (a restart). ``key`` (default: ``node_keys[partition_id]``) authenticates it."""
        extra = self.node_configs[partition_id] if partition_id < len(self.node_configs) else {}
        config = {"partition-id": partition_id, "num-partitions": num_partitions, **extra}
        port = free_port()
        in_node = ["--worker", "--preload", "bouquet.app.flower_apps", *["--worker-over-http"] * self.worker_over_http
                   ] if self.worker_in_node else []
        launcher = ([_bin("flower-supernode")] if self.node_waits == FLOWER and not in_node else
                    [sys.executable, "-m", "bouquet", "supernode", *self.node_waits.args(), *in_node, "--"])
        args = [*launcher, *self._security(False), "--superlink", self.address,
                "--port", str(port), "--node-config", _config_args(config)]
        if key is None and self.node_keys and partition_id < len(self.node_keys):
            key = self.node_keys[partition_id]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key.private)]
        if self.use_workers:
            args += ["--isolation", "process"]
        proc = self._spawn(f"supernode-{partition_id}", args)
        worker = self._spawn(f"worker-{partition_id}", [
            sys.executable, "-m", "bouquet", "node-worker", "--runtime-api-address", f"127.0.0.1:{port}",
            "--insecure", "--parent-pid", str(proc.pid), "--poll-interval", str(self.worker_poll),
            "--preload", "bouquet.app.flower_apps"]) if self.use_workers and not self.worker_in_node else None
        if index is None:
            self.supernodes.append(proc)
            self.workers.append(worker)
        else:
            self.supernodes[index], self.workers[index] = proc, worker
        return proc

    def kill_supernode(self, index: int) -> None:
        """Kill a SuperNode and its children (and its worker) at once (SIGKILL: a crash, not a shutdown)."""
        _kill_tree(self.supernodes[index])
        if self.workers[index] is not None:
            _kill_tree(self.workers[index])

    def _wait_port(self, port: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see {self.logs}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"flower-superlink did not listen on {port} within {self.startup_timeout:.0f}s")

    def run_app(self, app_dir: str | Path, run_config: dict | None = None, *,
                federation_config: dict | None = None, timeout: float = 600.0,
                on_line=None) -> subprocess.CompletedProcess:
        """``flwr run APP bouquet --stream`` against this SuperLink; returns when the run ends."""
        return flwr_run(app_dir, "bouquet", run_config, federation_config=federation_config, env=self.env(),
                        timeout=timeout, on_line=on_line)

    def stop(self) -> None:
        """Stop every process this federation started (SuperNodes first), by PID."""
        for proc in reversed(self.procs):
            stop_process(proc)

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _config_args(values: dict | None) -> str:
    """``key=value`` pairs as ``flwr run --run-config`` reads them (values as TOML)."""
    if not values:
        return ""
    return " ".join(f"{k}={tomli_w.dumps({'v': v})[4:].strip()}" for k, v in values.items())


def flwr_run(app_dir: str | Path, connection: str | None, run_config: dict | None = None, *,
             federation_config: dict | None = None, env: dict | None = None, timeout: float = 600.0,
             on_line=None) -> subprocess.CompletedProcess:
    """Submit a Flower app with ``flwr run ... --stream`` and wait until its run ends.

    ``on_line(line)`` sees every streamed output line as it comes; the whole output is returned too.
    """
    args = [_bin("flwr"), "run", str(app_dir)]
    if connection:
        args.append(connection)
    if run_config:
        args += ["--run-config", _config_args(run_config)]
    if federation_config:
        args += ["--federation-config", _config_args(federation_config)]
    args.append("--stream")
    # a managed local SuperLink (connection address ":local:") inherits this environment
    env = {**(os.environ if env is None else env), **NO_UV_SYNC}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
            if time.monotonic() > deadline:
                raise TimeoutError(f"flwr run did not finish within {timeout:.0f}s")
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stop_process(proc, grace=5.0)
    return subprocess.CompletedProcess(args, proc.returncode, "".join(lines), "")
