"""The shared RabbitMQ for integration tests, and private nodes that tests may restart."""

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
from typing import Any

import amqp
import pytest

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def amqp_url() -> str:
    """URL of the shared test broker."""
    return os.environ.get("TASKWARREN_TEST_AMQP_URL", DEFAULT_URL)


def require_rabbitmq() -> str:
    """The broker URL; skip when unreachable, but fail under CI (never pass by skipping)."""
    url = amqp_url()
    try:
        with connection(url):
            pass
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ unreachable at {url} under CI: {exc}")
        pytest.skip(f"RabbitMQ unreachable at {url}: {exc}")
    return url


@contextmanager
def connection(url: str | None = None) -> Iterator[Any]:
    """A raw py-amqp connection, for looking at queues from the outside."""
    from taskwarren.brokers.rabbitmq import parse_urls

    ep = parse_urls(url or amqp_url())[0]
    conn = amqp.Connection(host=f"{ep.host}:{ep.port}", userid=ep.userid, password=ep.password,
                           virtual_host=ep.vhost, connect_timeout=5)
    conn.connect()
    try:
        yield conn
    finally:
        with suppress(Exception):
            conn.close()


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRabbit:
    """A RabbitMQ node of a test's own (own name, ports and data), safe to restart.

    The shared broker is never touched.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"tw{uuid.uuid4().hex[:6]}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        # Under the rabbitmq user's home when we can: the node runs as that user and
        # must be able to reach its directory whatever /tmp's mode is.
        home = "/var/lib/rabbitmq"
        parent = home if os.geteuid() == 0 and os.path.isdir(home) else None
        self.base = tempfile.mkdtemp(prefix="tw-rabbit-", dir=parent)
        self.env = dict(os.environ)
        plugins = os.path.join(self.base, "enabled_plugins")
        with open(plugins, "w") as f:
            f.write("[].\n")
        # Our own config and env files: the machine's may pin the shared node's port.
        config = os.path.join(self.base, "rabbitmq.conf")
        with open(config, "w") as f:
            f.write(f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
                    "loopback_users = none\n")
        env_file = os.path.join(self.base, "rabbitmq-env.conf")
        with open(env_file, "w") as f:
            f.write("ERL_EPMD_ADDRESS=127.0.0.1\n")
        self.env.update({
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.base, "log"),
            "RABBITMQ_PID_FILE": os.path.join(self.base, "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
            "RABBITMQ_CONFIG_FILE": config,
            "RABBITMQ_CONF_ENV_FILE": env_file,
        })
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        if shutil.which("chown") and os.geteuid() == 0:
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", self.base], check=True)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.name, *args], env=self.env, check=True,
                       capture_output=True, timeout=timeout)

    def start(self) -> None:
        """Start the node and wait until it serves AMQP."""
        # As root, Debian's wrapper switches to the rabbitmq user and keeps RABBITMQ_*.
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True, timeout=30)
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

    def ctl(self, *args: str) -> None:
        """Run ``rabbitmqctl`` against this node."""
        self._ctl(*args)

    def stop(self) -> None:
        """Stop the node and remove its data."""
        with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._ctl("stop", timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
