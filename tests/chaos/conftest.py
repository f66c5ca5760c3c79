"""Fixtures of the chaos suite: private nodes, the cluster, and the figures table.

Private nodes and the cluster are started once per session, in the background as soon
as the session starts (booting Erlang takes ~10 s a node, and the scenarios on the
shared broker run meanwhile), and stopped at the end, data included, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from tests.chaos.harness import seed, tasks_per_scenario
from tests.chaos.history import Row
from tests.chaos.nodes import RabbitCluster, RabbitNode
from tests.support.rabbit import RELEASES, Release, amqp_url, require_rabbitmq

#: The figures of the last run, per set of releases (two runs may go side by side).
RESULTS = Path(__file__).with_name(f"results-{'-'.join(RELEASES) or 'none'}.md")
ROWS = pytest.StashKey[list[Row]]()
INFRA = pytest.StashKey[dict[str, "Infra"]]()
SESSION_START = pytest.StashKey[float]()


Broker = TypeVar("Broker", RabbitNode, RabbitCluster)


def _started(broker: Broker) -> Broker:
    broker.start()
    return broker


class Infra:
    """Brokers of the suite's own, each started at most once, in the background.

    One ``Infra`` per RabbitMQ release: its nodes run that release's programs.
    """

    def __init__(self, release: Release) -> None:
        self.release = release
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="chaos-infra")
        self.node: RabbitNode | None = None
        self.cluster: RabbitCluster | None = None
        self._node_future: Future[RabbitNode] | None = None
        self._cluster_future: Future[RabbitCluster] | None = None

    def want_node(self) -> Future[RabbitNode]:
        if self._node_future is None:
            short = "twp" + self.release.name.replace(".", "")
            node = self.node = RabbitNode(f"{short}-{os.getpid()}", self.release)
            self._node_future = self._executor.submit(_started, node)
        return self._node_future

    def want_cluster(self) -> Future[RabbitCluster]:
        if self._cluster_future is None:
            cluster = self.cluster = RabbitCluster("twc", release=self.release)
            self._cluster_future = self._executor.submit(_started, cluster)
        return self._cluster_future

    def stop(self) -> None:
        for future in (self._node_future, self._cluster_future):
            if future is not None:
                future.exception()  # wait for a start in progress before stopping
        if self.node is not None:
            self.node.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.node = self.cluster = None  # stopping twice is a no-op
        self._executor.shutdown()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[ROWS] = []
    config.stash[SESSION_START] = time.monotonic()


def _brokers_available() -> bool:
    return bool(shutil.which("rabbitmq-server") and shutil.which("rabbitmqctl"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the private brokers the selected scenarios need, in the background."""
    chaos = [item for item in session.items if item.get_closest_marker("chaos")]
    if not chaos or session.config.option.collectonly or not _brokers_available():
        return
    try:
        require_rabbitmq()
    except BaseException:
        return
    # The first release's brokers boot while the first tests run; later releases' boot
    # when their tests ask (two clusters at once would crowd a small machine).
    first = next(iter(RELEASES.values()))
    infra = session.config.stash.setdefault(INFRA, {}).setdefault(first.name, Infra(first))
    names = {name for item in chaos for name in getattr(item, "fixturenames", ())}
    if "private_node" in names:
        infra.want_node()
    if "cluster" in names:
        infra.want_cluster()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for infra in session.config.stash.get(INFRA, {}).values():
        infra.stop()


def _infra(request: pytest.FixtureRequest, release: Release) -> Infra:
    require_rabbitmq()
    if not _brokers_available():
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is not installed under CI")
        pytest.skip("rabbitmq-server is not installed")
    by_release = request.config.stash.setdefault(INFRA, {})
    if release.name not in by_release:
        # Tests run release by release: the previous release's nodes are done with.
        for done in by_release.values():
            done.stop()
        by_release[release.name] = Infra(release)
    return by_release[release.name]


@pytest.fixture(scope="session")
def chaos_results(request: pytest.FixtureRequest) -> list[Row]:
    return request.config.stash[ROWS]


@pytest.fixture
def shared_url(rabbit_release: Release) -> str:
    """The shared RabbitMQ (only ever connected to, never restarted)."""
    return require_rabbitmq()


@pytest.fixture(scope="session")
def _private_node(request: pytest.FixtureRequest, rabbit_release: Release) -> RabbitNode:
    return _infra(request, rabbit_release).want_node().result(timeout=180)


@pytest.fixture
def private_node(_private_node: RabbitNode) -> RabbitNode:
    """A node of the suite's own, running (a failed scenario may have left it stopped)."""
    _private_node.ensure_running()
    return _private_node


@pytest.fixture(scope="session")
def _cluster(request: pytest.FixtureRequest, rabbit_release: Release) -> RabbitCluster:
    return _infra(request, rabbit_release).want_cluster().result(timeout=240)


@pytest.fixture
def cluster(_cluster: RabbitCluster) -> Iterator[RabbitCluster]:
    """The three-node cluster, every node running."""
    for node in _cluster.nodes:
        node.ensure_running()
    yield _cluster
    for node in _cluster.nodes:
        node.ensure_running()


def table(rows: list[Row], elapsed_s: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Chaos run {when}: TW_CHAOS_N={tasks_per_scenario()}, "
             f"seeds {sorted({r.seed for r in rows})}, {elapsed_s:.0f} s in all", "",
             Row.header(), *(r.markdown() for r in rows)]
    notes = [f"- {r.scenario}: {note}" for r in rows for note in r.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    text = table(rows, time.monotonic() - config.stash[SESSION_START])
    RESULTS.write_text(text)
    terminalreporter.section("chaos figures")
    terminalreporter.write(text)
    terminalreporter.write_line(f"(written to {RESULTS}; shared broker {amqp_url()}, "
                                f"seed {seed()})")
