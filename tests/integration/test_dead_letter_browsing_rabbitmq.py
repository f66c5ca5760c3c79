"""Browsing, replaying and reading odd dead letters on the real RabbitMQ (3.x and 4.x)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.brokers.rabbitmq.link import Link
from taskwarren.errors import BrokerError
from taskwarren.message import Envelope, encode
from taskwarren.topology import EXCHANGE, QueueSpec, dead_queue_arguments
from tests.support.rabbit import connection, get_all, queue_counts
from tests.support.workers import ROOT, wait_until

pytestmark = pytest.mark.rabbitmq


def cli(*args: str, url: str) -> str:
    out = subprocess.run([sys.executable, "-m", "taskwarren", "--log-format", "json", *args,
                          "--url", url], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def dead_letters(app: Warren, queue: str, count: int) -> list[Envelope]:
    """Put ``count`` dead letters in ``queue``'s dead-letter queue, as a worker would."""
    app.declare([queue])
    envelopes = [encode("some.task", queue, b'{"n": %d}' % i) for i in range(count)]
    app.broker._publish(queue, envelopes, 0.0, dead=True)  # type: ignore[attr-defined]
    return envelopes


def test_browsing_dead_letters_thirty_times_keeps_every_one_of_them(
    queue: str, rabbit_url: str
) -> None:
    app = Warren(url=rabbit_url)
    sent = {e.message_id for e in dead_letters(app, queue, 5)}
    for browse in range(30):
        seen = {e.message_id for e in app.broker.dead_letters(queue)}
        assert seen == sent, f"browse {browse + 1} saw {len(seen)} of 5 dead letters"
    app.close()
    listing = cli("dlq", "list", queue, url=rabbit_url)
    assert {line.split("\t")[0] for line in listing.splitlines()} == sent
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 5


def test_a_dead_letter_queue_declared_by_an_older_taskwarren_survives_browsing_too(
    queue: str, rabbit_url: str
) -> None:
    # Earlier versions declared Q.dead with its queue type only (no delivery limit), which
    # on RabbitMQ 4.x means the default limit of 20 applies to it.
    with connection(rabbit_url) as conn:
        conn.channel().queue_declare(queue + ".dead", durable=True, auto_delete=False,
                                     arguments={"x-queue-type": "quorum"})
    app = Warren(url=rabbit_url)
    sent = {e.message_id for e in dead_letters(app, queue, 5)}
    for browse in range(30):
        seen = {e.message_id for e in app.broker.dead_letters(queue)}
        assert seen == sent, f"browse {browse + 1} saw {len(seen)} of 5 dead letters"
    spec = QueueSpec(queue + ".dead", dead_queue_arguments("quorum"))
    (status,) = app.broker.check_topology([spec])
    assert status.startswith("ok"), "topology plan accepts it and apply leaves it alone"
    app.close()
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 5


def test_a_replay_cut_off_midway_and_run_again_replays_every_dead_letter_exactly_once(
    queue: str, rabbit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Warren(url=rabbit_url)
    sent = sorted(e.message_id for e in dead_letters(app, queue, 1200))
    app.close()
    real_publish = Link.publish
    replayed = 0

    def cut_after_a_thousand(link: Any, exchange: str, *args: Any, **kwargs: Any) -> None:
        nonlocal replayed
        if exchange == EXCHANGE:
            replayed += 1
            if replayed > 1000:
                raise ConnectionResetError("the test cut the link")
        real_publish(link, exchange, *args, **kwargs)

    monkeypatch.setattr(Link, "publish", cut_after_a_thousand)
    first = Warren(url=rabbit_url)
    with pytest.raises((BrokerError, OSError)):
        first.broker.replay_dead(queue, None)
    first.close()
    monkeypatch.undo()
    wait_until(lambda: queue_counts(queue, rabbit_url)[0]
               + queue_counts(queue + ".dead", rabbit_url)[0] >= 1200, 10,
               what="every message back in a queue")

    out = cli("dlq", "replay", queue, "--all", url=rabbit_url)

    assert out.startswith("replayed ")
    assert sorted(m.properties["message_id"] for m in get_all(queue, rabbit_url)) == sent
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 0


def test_dead_letters_replayed_or_purged_by_id_are_gone_for_good(
    queue: str, rabbit_url: str
) -> None:
    app = Warren(url=rabbit_url)
    ids = [e.message_id for e in dead_letters(app, queue, 300)]

    assert app.broker.replay_dead(queue, ids[:100]) == 100
    assert app.broker.purge_dead(queue, ids[100:200]) == 100

    left = {e.message_id for e in app.broker.dead_letters(queue)}
    app.close()
    assert left == set(ids[200:])
    assert sorted(m.properties["message_id"] for m in get_all(queue, rabbit_url)) == sorted(
        ids[:100])


@pytest.mark.parametrize("verb", ["replay", "purge"])
def test_exactly_one_batch_of_dead_letters_taken_by_id_leaves_none_behind(
    queue: str, rabbit_url: str, verb: str
) -> None:
    from taskwarren.brokers.rabbitmq.dead_letters import DEAD_BATCH

    app = Warren(url=rabbit_url)
    ids = [e.message_id for e in dead_letters(app, queue, DEAD_BATCH)]
    # The last by-id batch is a full one: its acks must be applied before the channel
    # that holds them closes, or RabbitMQ 4.0 hands those dead letters back.
    take = app.broker.replay_dead if verb == "replay" else app.broker.purge_dead
    assert take(queue, ids) == DEAD_BATCH
    app.close()
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 0
    replayed = sorted(m.properties["message_id"] for m in get_all(queue, rabbit_url))
    assert replayed == (sorted(ids) if verb == "replay" else [])
