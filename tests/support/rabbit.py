"""The shared RabbitMQ brokers for integration tests, and private nodes that tests may restart.

The tests run against every RabbitMQ release in :data:`RELEASES`: the machine's own
broker (3.10 here) and RabbitMQ 4.0 from Debian trixie, installed into a chroot and
started beside it by ``tests/support/rabbitmq4.sh``. A private node runs the binaries of
the release under test, so restart and fault tests cover both too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import amqp
import pytest

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Where tests/support/rabbitmq4.sh puts RabbitMQ 4.0 (keep the two in step).
RABBITMQ4_ROOT = "/var/lib/taskwarren-test/rabbitmq4"
RABBITMQ4_PORT = "5673"


@dataclass(frozen=True)
class Release:
    """A RabbitMQ release under test: its shared node, and where its programs live.

    Attributes:
        name: short label used in test ids (``3.10``, ``4.0``).
        url: the release's shared node (never restarted by a test).
        root: the chroot holding its ``rabbitmq-server``; ``None`` for the machine's own.
        node: the shared node's Erlang name; ``None`` for the machine's default node.
    """

    name: str
    url: str
    root: Path | None = None
    node: str | None = None

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl args`` against the shared node; returns its output."""
        node = ["-n", self.node] if self.node else []
        return subprocess.run(self.command(["rabbitmqctl", *node, *args]), capture_output=True,
                              text=True, check=True, timeout=60).stdout

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run with this release's programs (inside its chroot, if any)."""
        if self.root is None:
            return argv
        return ["chroot", str(self.root), "/usr/bin/env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/var/lib/rabbitmq", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", *argv]

    def data_dir(self, prefix: str) -> tuple[Path, str]:
        """A new directory the rabbitmq user can use: (path here, path the node sees)."""
        inner_parent = "/var/lib/rabbitmq"
        host_parent = Path(inner_parent) if self.root is None else self.root / "var/lib/rabbitmq"
        if self.root is None and not (os.geteuid() == 0 and host_parent.is_dir()):
            host_parent = Path(tempfile.gettempdir())
        host = Path(tempfile.mkdtemp(prefix=prefix, dir=host_parent))
        os.chmod(host, 0o755)
        inner = str(host) if self.root is None else f"{inner_parent}/{host.name}"
        return host, inner

    def chown(self, inner: str) -> None:
        """Give ``inner`` (as the node sees it) to the release's rabbitmq user."""
        if os.geteuid() == 0:
            subprocess.run(self.command(["chown", "-R", "rabbitmq:rabbitmq", inner]), check=True)


def _releases() -> dict[str, Release]:
    port = os.environ.get("TW_RABBITMQ4_PORT", RABBITMQ4_PORT)
    known = {
        "3.10": Release("3.10", os.environ.get("TASKWARREN_TEST_AMQP_URL", DEFAULT_URL)),
        "4.0": Release("4.0", os.environ.get("TASKWARREN_TEST_AMQP4_URL",
                                             f"amqp://guest:guest@127.0.0.1:{port}/%2F"),
                       Path(os.environ.get("TW_RABBITMQ4_ROOT", RABBITMQ4_ROOT)),
                       os.environ.get("TW_RABBITMQ4_NODE", "tw4@localhost")),
    }
    chosen = os.environ.get("TW_RABBITMQ_RELEASES", "3.10,4.0")
    return {name: known[name] for name in chosen.split(",") if name}


#: The releases every RabbitMQ test runs against (``TW_RABBITMQ_RELEASES`` narrows them).
RELEASES = _releases()
_current = next(iter(RELEASES.values()), Release("3.10", DEFAULT_URL))


def current_release() -> Release:
    """The release the running test is about."""
    return _current


@contextmanager
def using(release: Release) -> Iterator[Release]:
    """Point :func:`amqp_url`, ``TASKWARREN_URL`` and the default app at ``release``."""
    global _current
    before, _current = _current, release
    old_env = os.environ.get("TASKWARREN_URL")
    os.environ["TASKWARREN_URL"] = release.url
    _rebind_default_app(release.url)
    try:
        yield release
    finally:
        _current = before
        if old_env is None:
            os.environ.pop("TASKWARREN_URL", None)
        else:
            os.environ["TASKWARREN_URL"] = old_env
        _rebind_default_app(before.url)


def _rebind_default_app(url: str) -> None:
    """Tasks declared with ``@task`` send through the default app: move it to ``url``."""
    from taskwarren import app as app_module

    app = app_module._default_app
    if app is not None and app.settings.url != url:
        app.close()
        app.settings = app.settings.model_copy(update={"url": url})
        app._broker = None


def amqp_url() -> str:
    """URL of the shared test broker of the release under test."""
    return _current.url


def require_rabbitmq() -> str:
    """The broker URL; skip when unreachable, but fail under CI (never pass by skipping)."""
    url = amqp_url()
    try:
        with connection(url):
            pass
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ {_current.name} unreachable at {url} under CI: {exc}")
        pytest.skip(f"RabbitMQ {_current.name} unreachable at {url}: {exc}")
    return url


@contextmanager
def connection(url: str | None = None) -> Iterator[Any]:
    """A raw py-amqp connection, for looking at queues from the outside."""
    from taskwarren.brokers.rabbitmq import parse_urls

    ep = parse_urls(url or amqp_url())[0]
    conn = amqp.Connection(host=f"{ep.host}:{ep.port}", userid=ep.userid, password=ep.password,
                           virtual_host=ep.vhost, connect_timeout=30)  # a loaded CI broker
    try:
        conn.connect()
        yield conn
    finally:
        try:
            conn.close()
        except Exception:  # a failed handshake or close: the socket is still closed
            with suppress(Exception):
                conn.collect()


def unique_queue(prefix: str = "twtest") -> str:
    """A queue name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def queue_counts(queue: str, url: str | None = None) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue``."""
    with connection(url) as conn:
        ch = conn.channel()
        _, messages, consumers = ch.queue_declare(queue, passive=True)
        return messages, consumers


def consumer_count(queue: str, url: str | None = None) -> int:
    """Consumers of ``queue``; 0 while it does not exist yet."""
    try:
        return queue_counts(queue, url)[1]
    except amqp.exceptions.NotFound:
        return 0


def delete_queues(*queues: str, url: str | None = None) -> None:
    """Delete ``queues`` and their dead-letter queues (best effort)."""
    try:
        with connection(url) as conn:
            for q in queues:
                for name in (q, q + ".dead"):
                    ch = conn.channel()
                    try:
                        ch.queue_delete(name)
                        ch.close()
                    except Exception:
                        pass
    except OSError:
        pass


def get_all(queue: str, url: str | None = None, ack: bool = True) -> list[Any]:
    """Take every message out of ``queue`` (acked unless ``ack`` is false)."""
    out = []
    with connection(url) as conn:
        ch = conn.channel()
        while True:
            msg = ch.basic_get(queue, no_ack=False)
            if msg is None:
                break
            out.append(msg)
        if ack and out:
            ch.basic_ack(out[-1].delivery_info["delivery_tag"], multiple=True)
    return out


#: Settings of every node a test starts. At-least-once dead-lettering (the delay levels)
#: retries a hop whose target was not up yet (a node just restarted) only after this
#: long: 180 s by default, longer than any test waits. Named ``..._ms`` from 4.3 on.
TEST_RABBIT_ENV = {"dead_letter_worker_publisher_confirm_timeout": 2000,
                   "dead_letter_worker_publisher_confirm_timeout_ms": 2000}


def write_advanced_config(path: str, rabbit_env: dict[str, int]) -> None:
    """An advanced.config setting ``rabbit_env`` in the ``rabbit`` application."""
    terms = ", ".join(f"{{{key}, {value}}}" for key, value in rabbit_env.items())
    with open(path, "w") as f:
        f.write(f"[{{rabbit, [{terms}]}}].\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRabbit:
    """A RabbitMQ node of a test's own (own name, ports and data), safe to restart.

    It runs the programs of ``release`` (default: the release under test). The shared
    brokers are never touched.
    """

    def __init__(self, name: str | None = None, release: Release | None = None) -> None:
        self.release = release or current_release()
        self.name = name or f"tw{uuid.uuid4().hex[:6]}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        # Under the rabbitmq user's home (the release's own, for a chroot): the node runs
        # as that user and must be able to reach its directory whatever /tmp's mode is.
        host, inner = self.release.data_dir("tw-rabbit-")
        self.base = str(host)
        (host / "enabled_plugins").write_text("[].\n")
        # Our own config and env files: the machine's may pin the shared node's port.
        (host / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
                                            "loopback_users = none\n")
        (host / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        self.env = dict(os.environ)
        self.env.update({
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{inner}/mnesia",
            "RABBITMQ_LOG_BASE": f"{inner}/log",
            "RABBITMQ_PID_FILE": f"{inner}/node.pid",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{inner}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{inner}/rabbitmq.conf",
            "RABBITMQ_CONF_ENV_FILE": f"{inner}/rabbitmq-env.conf",
        })
        for sub in ("mnesia", "log"):
            (host / sub).mkdir(exist_ok=True)
        self._inner = inner
        self.rabbit_env = dict(TEST_RABBIT_ENV)
        write_advanced_config(str(host / "advanced.config"), self.rabbit_env)
        self.env["RABBITMQ_ADVANCED_CONFIG_FILE"] = f"{inner}/advanced.config"
        self.release.chown(inner)

    def configure(self, conf: str = "", **rabbit_env: int) -> None:
        """Add ``conf`` lines to the node's rabbitmq.conf and ``rabbit_env`` to its
        advanced.config (before :meth:`start`)."""
        with open(os.path.join(self.base, "rabbitmq.conf"), "a") as f:
            f.write(conf)
        self.rabbit_env.update(rabbit_env)
        write_advanced_config(os.path.join(self.base, "advanced.config"), self.rabbit_env)
        self.release.chown(self._inner)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _ctl(self, *args: str, timeout: float = 60) -> str:
        return subprocess.run(self.release.command(["rabbitmqctl", "-n", self.name, *args]),
                              env=self.env, check=True, capture_output=True, text=True,
                              timeout=timeout).stdout

    def start(self) -> None:
        """Start the node and wait until it serves AMQP."""
        # As root, Debian's wrapper switches to the rabbitmq user and keeps RABBITMQ_*.
        subprocess.run(self.release.command(["rabbitmq-server", "-detached"]), env=self.env,
                       check=True, timeout=30)
        self.await_startup()

    def await_startup(self) -> None:
        """Wait until the node serves AMQP (``await_startup`` fails while the VM boots)."""
        deadline = time.monotonic() + 90
        while True:
            try:
                self._ctl("await_startup", "--timeout", "60", timeout=90)
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("private RabbitMQ did not open its port")

    def restart_app(self) -> None:
        """Stop and start the broker application (messages on disk must survive)."""
        self._ctl("stop_app")
        self._ctl("start_app")
        self.await_startup()

    def stop_app(self) -> None:
        self._ctl("stop_app")

    def start_app(self) -> None:
        self._ctl("start_app")
        self.await_startup()

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` against this node; returns its output."""
        return self._ctl(*args)

    def stop(self) -> None:
        """Stop the node and remove its data."""
        with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._ctl("stop", timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
