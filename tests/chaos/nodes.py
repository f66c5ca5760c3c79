"""Private RabbitMQ nodes and a three-node cluster for the chaos suite.

Every node has its own name, AMQP and distribution ports, data, log and crash-dump
directory, config file and env file; the shared broker (``rabbit@localhost``) is never
touched. Nodes run as user ``rabbitmq`` (Debian's wrapper switches to it when started
as root), so their data must live where that user can reach it: ``/tmp`` may be
private to root (it is on the CI image), so the base directory goes under the first
of ``$TW_CHAOS_RABBIT_DIR``, the temp dir, ``/var/tmp``, ``/dev/shm`` that every user
can traverse. All nodes share ``/var/lib/rabbitmq/.erlang.cookie`` through that user's
HOME, which is what lets them cluster and lets ``rabbitmqctl`` drive them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.rabbit import (
    TEST_RABBIT_ENV,
    Release,
    current_release,
    write_advanced_config,
)

#: Seconds a node may take to boot before we give up (boots take ~10 s here).
BOOT_TIMEOUT_S = 90.0

_live: set[RabbitNode] = set()
_live_lock = threading.Lock()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _traversable_by_all(path: Path) -> bool:
    """True when every directory from ``/`` down to ``path`` has the x bit for others."""
    try:
        for part in [path, *path.parents]:
            if not os.stat(part).st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


def _base_parent() -> Path:
    candidates = [os.environ.get("TW_CHAOS_RABBIT_DIR"), tempfile.gettempdir(), "/var/tmp",
                  "/dev/shm"]
    for candidate in candidates:
        if candidate and os.path.isdir(candidate) and _traversable_by_all(Path(candidate)):
            return Path(candidate)
    raise RuntimeError("no directory the rabbitmq user can reach for a private node's data; "
                       "set TW_CHAOS_RABBIT_DIR")


class NodeError(RuntimeError):
    """A private node did not do what it was told; the message carries its log tail."""


class RabbitNode:
    """One private RabbitMQ node (``name@localhost``) that tests may stop and start.

    It runs the programs of ``release`` (the release under test by default).
    """

    def __init__(self, short_name: str, release: Release | None = None) -> None:
        self.release = release or current_release()
        self.name = f"{short_name}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        prefix = f"tw-chaos-{short_name}-"
        if self.release.root is None:
            self.base = Path(tempfile.mkdtemp(prefix=prefix, dir=_base_parent()))
            os.chmod(self.base, 0o755)
            inner = str(self.base)
        else:
            self.base, inner = self.release.data_dir(prefix)
        (self.base / "enabled_plugins").write_text("[].\n")
        # Our own config and env files: the machine's pin the shared node's port and flags.
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.base / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        write_advanced_config(str(self.base / "advanced.config"), TEST_RABBIT_ENV)
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir()
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{inner}/mnesia",
            "RABBITMQ_LOG_BASE": f"{inner}/log",
            "RABBITMQ_PID_FILE": f"{inner}/node.pid",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{inner}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{inner}/rabbitmq.conf",
            "RABBITMQ_CONF_ENV_FILE": f"{inner}/rabbitmq-env.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{inner}/advanced.config",
            "ERL_CRASH_DUMP": f"{inner}/log/erl_crash.dump",
        }
        self.release.chown(inner)
        with _live_lock:
            _live.add(self)

    def __repr__(self) -> str:
        return f"RabbitNode({self.name}, port={self.port})"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    # -- rabbitmqctl ------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0, tool: str = "rabbitmqctl") -> str:
        """Run ``tool -n NODE args`` and return its output.

        Raises:
            NodeError: the command failed (its output and the node's log tail attached).
        """
        try:
            done = subprocess.run(self.release.command([tool, "-n", self.name, *args]),
                                  env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise NodeError(f"{tool} {' '.join(args)} on {self.name} timed out after "
                            f"{timeout}s\n{self.log_tail()}") from exc
        if done.returncode != 0:
            raise NodeError(f"{tool} {' '.join(args)} on {self.name} failed "
                            f"({done.returncode}): {done.stdout}{done.stderr}\n"
                            f"{self.log_tail()}")
        return done.stdout

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for path in sorted((self.base / "log").glob("*")):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()
                if path.name == "erl_crash.dump":
                    text = text[:3]
                out.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Boot the node and wait until it serves AMQP."""
        subprocess.run(self.release.command(["rabbitmq-server", "-detached"]), env=self.env,
                       check=True, timeout=30, capture_output=True)
        self.await_startup()

    def await_startup(self, timeout: float = BOOT_TIMEOUT_S) -> None:
        """Wait until the app runs and the AMQP port accepts connections.

        ``rabbitmqctl await_startup`` fails at once while the VM has not registered
        with epmd yet, so it is retried until ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl("await_startup", "--timeout", "30", timeout=40)
                break
            except NodeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise NodeError(f"{self.name} did not open port {self.port}\n{self.log_tail()}")

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app", timeout=BOOT_TIMEOUT_S)
        self.await_startup()

    def restart_app(self) -> None:
        """Stop and start the broker application; the Erlang VM stays up."""
        self.stop_app()
        self.start_app()

    def app_running(self) -> bool:
        """True when the node answers and its broker application runs."""
        try:
            return self.ctl("eval", "rabbit:is_running().", timeout=30).strip() == "true"
        except NodeError:
            return False

    def ensure_running(self) -> None:
        """Start whatever is down: the app, or the whole VM if it was killed."""
        if self.app_running():
            self.await_startup()
        elif self.vm_alive():
            self.start_app()
        else:
            self.start()

    def vm_alive(self) -> bool:
        pid = self.os_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill_vm(self) -> int:
        """SIGKILL the node's Erlang VM (a crash: no goodbye to clients or peers)."""
        pid = self.os_pid()
        if pid is None:
            raise NodeError(f"{self.name} has no pid file")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.vm_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return pid

    def os_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.base / "node.pid").read_text().strip())
        return None

    def stop(self) -> None:
        """Stop the node (SIGKILL it by pid if it will not stop) and delete its data."""
        pid = self.os_pid()
        with contextlib.suppress(NodeError):
            self.ctl("stop", timeout=60)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)
        with _live_lock:
            _live.discard(self)


class RabbitCluster:
    """Three (or more) private nodes joined into one cluster."""

    def __init__(self, prefix: str = "twc", size: int = 3,
                 release: Release | None = None) -> None:
        run = uuid.uuid4().hex[:6]
        self.nodes = [RabbitNode(f"{prefix}{i + 1}-{run}", release) for i in range(size)]

    @property
    def url(self) -> str:
        """Every node's AMQP URL, comma-separated (what ``TASKWARREN_URL`` takes)."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        """Boot every node at once, then join the others to the first."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(RabbitNode.start, self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.stop_app()
            node.ctl("join_cluster", first.name)
            node.start_app()
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise NodeError(f"cluster did not form: running nodes {running}")

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def running_nodes(self, via: RabbitNode) -> list[str]:
        out = via.ctl("eval", "rabbit_nodes:all_running().")
        return [part.strip(" '[]\n") for part in out.split(",") if part.strip(" '[]\n")]

    def any_running(self, exclude: Sequence[RabbitNode] = ()) -> RabbitNode:
        return next(n for n in self.nodes if n not in exclude)

    def leader_of(self, queue: str, via: RabbitNode | None = None) -> RabbitNode:
        """The node that leads quorum queue ``queue``."""
        via = via or self.nodes[0]
        out = via.ctl("list_queues", "-q", "--no-table-headers", "name", "leader")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return self.node(parts[1])
        raise NodeError(f"no leader listed for {queue!r}: {out}")

    def members_of(self, queue: str, via: RabbitNode | None = None) -> list[str]:
        via = via or self.nodes[0]
        out = via.ctl("list_queues", "-q", "--no-table-headers", "name", "members")
        for line in out.splitlines():
            name, _, rest = line.partition("\t")
            if name == queue:
                return [m.strip(" '[]") for m in rest.split(",") if m.strip(" '[]")]
        raise NodeError(f"no members listed for {queue!r}: {out}")

    def stop(self) -> None:
        """Stop every node and delete their data."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(RabbitNode.stop, self.nodes))


@atexit.register
def _stop_leftovers() -> None:
    """Last resort when a session dies before its fixtures' teardown ran."""
    with _live_lock:
        nodes = list(_live)
    for node in nodes:
        node.stop()
