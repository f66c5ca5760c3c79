"""The relay's decisions, on a SQLite store: what it publishes, rejects, retries."""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.errors import PublishTimeoutError
from taskwarren.message import Envelope
from taskwarren.store import Store, open_store
from taskwarren.store.relay import Relay
from taskwarren.store.schema import OUTBOX, REJECTED


def noop(n: int) -> None:
    """A task."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'app.db'}")
    s.init()
    yield s
    s.close()


def _send(store: Store, *ns: int) -> None:
    app = Warren(url="memory://")
    task = app.task(noop, name="noop", queue="q")
    conn = sqlite3.connect(store.url.split(":///", 1)[1])
    task.options(db=conn).send_many([{"n": n} for n in ns])
    conn.commit()
    conn.close()


def _set_headers(store: Store, n: int, headers: str) -> None:
    conn = sqlite3.connect(store.url.split(":///", 1)[1])
    conn.execute(f"UPDATE {OUTBOX} SET headers = ? WHERE body = ?",
                 (headers, f'{{"n":{n}}}'.encode()))
    conn.commit()
    conn.close()


def _rejected(store: Store) -> list[str]:
    conn = sqlite3.connect(store.url.split(":///", 1)[1])
    reasons = [r for (r,) in conn.execute(f"SELECT reason FROM {REJECTED} ORDER BY id")]
    conn.close()
    return reasons


class Broker:
    """Records what is published; refuses what ``refuse`` says."""

    def __init__(self, refuse: type[BaseException] | None = None, bad: int | None = None):
        self.published: list[bytes] = []
        self.refuse = refuse
        self.bad = bad

    def __call__(self, queue: str, envelopes: Sequence[Envelope], delay_s: float) -> None:
        if self.refuse is not None:
            raise self.refuse("refused")
        if self.bad is not None and any(e.body == f'{{"n":{self.bad}}}'.encode()
                                        for e in envelopes):
            raise struct.error("argument out of range")  # as py-amqp does on a bad value
        self.published.extend(e.body for e in envelopes)


def test_rows_whose_headers_amqp_cannot_carry_are_rejected_and_the_rest_go(
    store: Store,
) -> None:
    _send(store, 1, 2, 3, 4, 5)
    base = {"tw-task": "noop", "tw-queue": "q", "tw-attempt": 0}
    _set_headers(store, 1, json.dumps({**base, "k" * 300: "x"}))
    _set_headers(store, 2, json.dumps({**base, "big": 2 ** 64}))
    _set_headers(store, 3, "[" * 100_000 + "]" * 100_000)
    _set_headers(store, 4, json.dumps({**base, "deep": [[[[[[[[[[["x"]]]]]]]]]]]}))
    broker = Broker()
    relay = Relay(store, broker, max_bytes=1 << 20)
    assert relay.relay_once() == 5
    assert broker.published == [b'{"n":5}']
    assert store.counts() == (0, 4)
    reasons = _rejected(store)
    assert reasons[0] == "a header name is longer than 255 bytes"
    assert reasons[1] == "a header holds an integer outside 64 bits"
    assert reasons[2].startswith("headers are not JSON: RecursionError")
    assert reasons[3] == "headers nest deeper than 8 levels"


def test_a_row_the_client_cannot_encode_is_found_alone_and_rejected(store: Store) -> None:
    _send(store, 1, 2, 3)
    broker = Broker(bad=2)
    relay = Relay(store, broker, max_bytes=1 << 20)
    assert relay.relay_once() == 3
    assert sorted(broker.published) == [b'{"n":1}', b'{"n":3}']
    assert _rejected(store) == ["cannot be published: error: argument out of range"]
    assert store.counts() == (0, 1)


def test_rows_the_broker_did_not_take_stay_and_are_tried_again_later(store: Store) -> None:
    _send(store, 1)
    relay = Relay(store, Broker(refuse=PublishTimeoutError), max_bytes=1 << 20)
    conn = sqlite3.connect(store.url.split(":///", 1)[1])
    for _ in range(1100):  # the backoff's exponent is capped: no OverflowError, ever
        assert relay.relay_once() == 1
        conn.execute(f"UPDATE {OUTBOX} SET claimed_until = NULL")  # due again at once
        conn.commit()
    conn.close()
    assert store.counts() == (1, 0)
    relay.publish = Broker()
    assert relay.relay_once() == 1
    assert store.counts() == (0, 0)


def test_a_refused_declare_is_no_rows_fault_they_wait_and_none_is_rejected(
    store: Store,
) -> None:
    from taskwarren.errors import ConfigurationError

    _send(store, 1, 2, 3)
    relay = Relay(store, Broker(refuse=ConfigurationError), max_bytes=1 << 20)
    assert relay.relay_once() == 3
    assert store.counts() == (3, 0)  # all still waiting, none rejected
    assert _rejected(store) == []


def test_header_text_that_is_not_utf8_is_rejected_not_a_crash(store: Store) -> None:
    _send(store, 1, 2)
    base = {"tw-task": "noop", "tw-queue": "q", "tw-attempt": 0}
    _set_headers(store, 1, json.dumps({**base, "\ud800": 1}))
    broker = Broker()
    relay = Relay(store, broker, max_bytes=1 << 20)
    assert relay.relay_once() == 2
    assert broker.published == [b'{"n":2}']
    assert _rejected(store) == ["a header holds text that is not UTF-8"]


def test_rows_sharing_a_task_id_are_published_as_separate_messages(store: Store) -> None:
    app = Warren(url="memory://")
    task = app.task(noop, name="noop", queue="q")
    conn = sqlite3.connect(store.url.split(":///", 1)[1])
    task.options(db=conn, task_id="order-42").send(1)
    task.options(db=conn, task_id="order-42").send(2)
    conn.commit()
    conn.close()
    calls: list[list[bytes]] = []

    def publish(queue: str, envelopes: Sequence[Envelope], delay_s: float) -> None:
        assert len({e.message_id for e in envelopes}) == len(envelopes)
        calls.append([e.body for e in envelopes])

    assert Relay(store, publish, max_bytes=1 << 20).relay_once() == 2
    assert calls == [[b'{"n":1}'], [b'{"n":2}']]
    assert store.counts() == (0, 0)


def test_a_row_whose_text_is_not_utf8_is_rejected_and_its_reason_stored(store: Store) -> None:
    _send(store, 1, 2)
    conn = sqlite3.connect(store.url.split(":///", 1)[1])
    # Written by something other than taskwarren: bytes that are not UTF-8, stored as text.
    conn.execute(f"UPDATE {OUTBOX} SET headers = CAST(x'7bff7d' AS TEXT), "
                 "queue = CAST(x'71ff' AS TEXT) WHERE body = ?", (b'{"n":1}',))
    conn.commit()
    conn.close()
    broker = Broker()
    relay = Relay(store, broker, max_bytes=1 << 20)
    assert relay.relay_once() == 2
    assert broker.published == [b'{"n":2}']
    [reason] = _rejected(store)
    assert reason.startswith("headers are not JSON")
