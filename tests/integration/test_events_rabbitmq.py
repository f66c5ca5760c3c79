"""Events (topic), broadcasts (fanout) and topology plan/apply on the real RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.errors import UnroutableError
from taskwarren.message import H_ERROR_TYPE, H_TASK
from tests.support.rabbit import (
    connection,
    current_release,
    delete_queues,
    get_all,
    queue_counts,
)
from tests.support.workers import ROOT, Ledger, Pool, wait_until

pytestmark = pytest.mark.rabbitmq
MODULE = "tests.integration.twevents"


class Names:
    """One test's queues and routing-key prefix (as ``twevents`` builds them)."""

    def __init__(self) -> None:
        self.prefix = f"twtest-ev{uuid.uuid4().hex[:10]}"
        self.logs = f"{self.prefix}-logs"
        self.alerts = f"{self.prefix}-alerts"
        self.control = f"{self.prefix}-control"
        self.env = {"TWTEST_EVENTS": self.prefix}


@pytest.fixture
def names(rabbit_url: str) -> Iterator[Names]:
    n = Names()
    yield n
    delete_queues(n.logs, n.alerts, n.control, url=rabbit_url)


@pytest.fixture
def app(rabbit_url: str) -> Iterator[Warren]:
    a = Warren(url=rabbit_url)
    yield a
    a.close()


def note(n: int, ledger: Ledger | str, fail: bool = False) -> object:
    from tests.integration.twevents import Note

    return Note(n=n, ledger=str(ledger), fail=fail)


def pool(names: Names, queues: list[str], url: str, path: Path, concurrency: int = 1) -> Pool:
    return Pool(MODULE, queues, url, concurrency=concurrency, env=names.env, log_path=path)


def test_two_subscriber_queues_each_get_their_own_copy_and_a_failing_one_leaves_the_other_alone(
    names: Names, ledger: Ledger, rabbit_url: str, app: Warren, tmp_path: Path
) -> None:
    workers = pool(names, [names.logs, names.alerts], rabbit_url, tmp_path / "w.log")
    try:
        wait_until(lambda: _consumers(names.alerts) == 1 and _consumers(names.logs) == 1, 30,
                   what="both subscriber queues consumed")
        assert app.publish_event(f"{names.prefix}.audit.irs", note(1, ledger)) is None
        assert app.publish_event(f"{names.prefix}.audit.tax", note(2, ledger, fail=True)) is None
        assert app.publish_event(f"{names.prefix}.other", note(3, ledger)) is None
        wait_until(lambda: queue_counts(names.alerts + ".dead")[0] == 1, 30,
                   what="the failing alert dead-lettered after its retry")
        wait_until(lambda: len(ledger.count("logs")) == 3, 10, what="three logged events")
        assert workers.stop() == 0
    finally:
        workers.kill()
    assert ledger.count("logs") == {1: 1, 2: 1, 3: 1}, "each event logged once"
    assert ledger.count("alerts") == {1: 1, 2: 2}, "two audit events; the failing one retried once"
    (dead,) = get_all(names.alerts + ".dead")
    headers = dead.properties["application_headers"]
    assert headers[H_TASK] == "tests.integration.twevents.alert"
    assert headers[H_ERROR_TYPE] == "RuntimeError"
    assert queue_counts(names.logs + ".dead")[0] == 0


def _consumers(queue: str) -> int:
    try:
        return queue_counts(queue)[1]
    except Exception:
        return 0


def test_subscriptions_are_durable_bindings_made_when_a_worker_starts(
    names: Names, ledger: Ledger, rabbit_url: str, app: Warren, tmp_path: Path
) -> None:
    key = f"{names.prefix}.audit.later"
    assert app.publish_event(key, note(1, ledger)) == 0, "nothing subscribed yet"
    workers = pool(names, [names.logs, names.alerts], rabbit_url, tmp_path / "w.log")
    try:
        wait_until(lambda: _consumers(names.alerts) == 1, 30, what="the worker consuming")
    finally:
        assert workers.stop() == 0
    # No worker runs now: the durable bindings still route, the queues keep the copies.
    assert app.publish_event(key, note(2, ledger)) is None
    assert queue_counts(names.logs)[0] == 1
    assert queue_counts(names.alerts)[0] == 1


def test_an_event_with_no_subscriber_is_reported_or_refused(
    names: Names, ledger: Ledger, app: Warren
) -> None:
    key = f"{names.prefix}.nobody"
    assert app.publish_event(key, note(1, ledger)) == 0
    with pytest.raises(UnroutableError, match="reached no queue"):
        app.publish_event(key, note(1, ledger), require_subscriber=True)


def test_a_broadcast_runs_once_in_every_child_of_every_pool_and_not_in_a_later_one(
    names: Names, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    from tests.integration import twevents

    first = pool(names, [names.control], rabbit_url, tmp_path / "a.log", concurrency=2)
    second = pool(names, [names.control], rabbit_url, tmp_path / "b.log", concurrency=2)
    late = None
    broadcaster = Warren(url=rabbit_url)
    reload_rules = broadcaster.task(name=twevents.reload_rules.name, queue=names.control,
                                    broadcast=True)(twevents.reload_rules.fn)
    try:
        wait_until(lambda: len(first.children()) == 2 and len(second.children()) == 2, 30,
                   what="four children")
        children = set(first.children()) | set(second.children())

        def all_listening() -> bool:
            reload_rules.send(0, str(ledger))  # version 0: a ping until every child hears it
            return {pid for e, n, pid in ledger.events() if n == 0} == children

        wait_until(all_listening, 30, interval=0.3, what="every child listening")
        reload_rules.send(7, str(ledger))
        wait_until(lambda: len([1 for e, n, _ in ledger.events() if n == 7]) >= 4, 20,
                   what="version 7 in four processes")
        late = pool(names, [names.control], rabbit_url, tmp_path / "c.log", concurrency=1)
        wait_until(lambda: _consumers(names.control) == 5, 30, what="the late pool consuming")
        reload_rules.send(8, str(ledger))
        wait_until(lambda: len([1 for e, n, _ in ledger.events() if n == 8]) >= 5, 20,
                   what="version 8 in five processes")
        late_children = set(late.children())
        assert first.stop() == 0 and second.stop() == 0 and late.stop() == 0
    finally:
        first.kill()
        second.kill()
        if late is not None:
            late.kill()
        broadcaster.close()
    sevens = sorted(pid for e, n, pid in ledger.events() if n == 7)
    assert sorted(children) == sevens, "once in every child of both pools"
    assert not late_children & set(sevens), "a later process never gets an old broadcast"
    eights = sorted(pid for e, n, pid in ledger.events() if n == 8)
    assert sorted(children | late_children) == eights


def cli(*args: str, names: Names, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **names.env}
    env.pop("TASKWARREN_URL", None)
    return subprocess.run([sys.executable, "-m", "taskwarren", "--log-format", "json", *args,
                           "--url", url], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


def test_topology_plan_shows_what_is_missing_and_apply_creates_it(
    names: Names, rabbit_url: str
) -> None:
    queues = ["-Q", f"{names.logs},{names.alerts}"]
    before = cli("topology", "plan", MODULE, *queues, names=names, url=rabbit_url)
    assert before.returncode == 0, before.stderr
    lines = before.stdout.splitlines()
    assert any(names.logs in line and "x-queue-type=quorum" in line
               and line.endswith("missing") for line in lines)
    assert any(f"taskwarren.events -> queue {names.logs} key '{names.prefix}.#'" in line
               for line in lines)
    assert any(line.startswith("exchange taskwarren.events (topic") for line in lines)
    assert "4 missing, 0 differ" in before.stdout

    applied = cli("topology", "apply", MODULE, *queues, names=names, url=rabbit_url)
    assert applied.returncode == 0, applied.stderr
    assert "4 created" in applied.stdout
    assert queue_counts(names.logs) == (0, 0)
    app = Warren(url=rabbit_url)
    try:
        assert app.publish_event(f"{names.prefix}.audit.x", note(1, "/dev/null")
                                 ) is None, "the subscription binding exists"
    finally:
        app.close()
    after = cli("topology", "plan", MODULE, *queues, names=names, url=rabbit_url)
    assert "0 missing, 0 differ" in after.stdout


def test_topology_apply_leaves_a_queue_with_other_arguments_alone_and_says_how_to_migrate(
    names: Names, rabbit_url: str
) -> None:
    with connection(rabbit_url) as conn:
        conn.channel().queue_declare(names.logs, durable=True, auto_delete=False,
                                     arguments={"x-queue-type": "classic"})
    planned = cli("topology", "plan", MODULE, "-Q", names.logs, names=names, url=rabbit_url)
    (line,) = [row for row in planned.stdout.splitlines()
               if row.startswith(f"queue    {names.logs} ")]
    assert "differs" in line and "x-queue-type" in line
    applied = cli("topology", "apply", MODULE, "-Q", names.logs, names=names, url=rabbit_url)
    assert applied.returncode == 1
    assert "rabbitmqctl delete_queue" in applied.stdout
    assert "never deletes a queue" in applied.stdout
    assert queue_counts(names.logs + ".dead") == (0, 0), "what was missing was still created"
    # The queue is untouched: still classic.
    listing = current_release().ctl("list_queues", "-q", "name", "arguments")
    (row,) = [r for r in listing.splitlines() if r.split("\t")[0] == names.logs]
    assert "quorum" not in row
