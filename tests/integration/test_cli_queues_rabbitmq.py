"""``taskwarren queues`` without names and ``taskwarren purge`` on the real RabbitMQ.

Listing every queue uses the management plugin of the machine's broker (3.10 here;
``.ci/run`` enables it); the RabbitMQ 4.0 node runs without it, so there the command
falls back to the queues of the modules given, and says so.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from taskwarren import Warren
from taskwarren.message import encode
from tests.support.rabbit import queue_counts
from tests.support.workers import ROOT


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taskwarren", "--log-format", "json", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


@pytest.mark.rabbitmq(releases=("3.10",))
def test_queues_without_names_lists_every_taskwarren_queue_from_the_management_api(
    queue: str, rabbit_url: str
) -> None:
    app = Warren(url=rabbit_url)
    app.declare([queue])
    app.broker.publish(queue, [encode("t", queue, b"{}") for _ in range(4)])
    app.close()

    out = cli("queues", "--json", "--url", rabbit_url)

    assert out.returncode == 0, out.stderr
    rows = {row["queue"]: row for row in json.loads(out.stdout)}
    # The management API's figures lag the queue by up to its stats interval (5 s).
    assert rows[queue] == {"queue": queue, "ready": rows[queue]["ready"], "unacked": 0,
                           "consumers": 0, "dead": 0, "delayed": None}
    assert rows[queue]["ready"] in range(5)
    # Task queues and the job stores' event queues (taskwarren.jobs.*), not the dead-letter
    # queues nor the delay levels.
    assert not any(name.endswith(".dead") or name.startswith("taskwarren.delay.")
                   for name in rows)
    assert out.stderr.startswith("source: every taskwarren queue of vhost '/' from the "
                                 "RabbitMQ management API at http://guest:***@")


@pytest.mark.rabbitmq
def test_without_a_management_api_queues_shows_the_modules_queues_and_says_why(
    queue: str, rabbit_url: str
) -> None:
    app = Warren(url=rabbit_url)
    app.declare(["twtest-default"])
    app.close()

    out = cli("queues", "-m", "tests.integration.twtasks", "--url", rabbit_url,
              "--management-url", "http://guest:guest@127.0.0.1:1/")

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == [
        "queue", "ready", "unacked", "consumers", "dead", "delayed"]
    assert "twtest-default" in out.stdout
    assert out.stderr.strip() == (
        "source: the queues of tests.integration.twtasks (management API at "
        "http://guest:***@127.0.0.1:1/: ConnectionRefusedError)")


@pytest.mark.rabbitmq
def test_purge_empties_a_task_queue_and_keeps_its_dead_letters(
    queue: str, rabbit_url: str
) -> None:
    app = Warren(url=rabbit_url)
    app.declare([queue])
    app.broker.publish(queue, [encode("t", queue, b"{}") for _ in range(5)])
    app.broker._publish(queue, [encode("t", queue, b"{}")], 0.0,  # type: ignore[attr-defined]
                        dead=True)
    app.close()

    refused = cli("purge", queue, "--url", rabbit_url)
    assert refused.returncode == 2
    assert queue_counts(queue, rabbit_url)[0] == 5

    out = cli("purge", queue, "--yes", "--url", rabbit_url)

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"purged 5 from {queue}",
        f"kept: being run (count unknown on this broker), 1 dead (`taskwarren dlq purge "
        f"{queue} --yes`), delayed (count unknown on this broker) (they arrive when due)"]
    assert queue_counts(queue, rabbit_url)[0] == 0
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 1


@pytest.mark.rabbitmq
def test_purge_refuses_a_queue_that_is_not_a_task_queue(rabbit_url: str) -> None:
    out = cli("purge", "twtest-no-such-queue-here", "--yes", "--url", rabbit_url)

    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("Error: queue 'twtest-no-such-queue-here' not found: broker "
                           "refused: Queue.declare: (404) NOT_FOUND")
