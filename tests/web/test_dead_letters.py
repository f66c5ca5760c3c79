"""The dead letters a queue page shows: a poison message never breaks the list, what is
read and shown is bounded, and reading is cached and kept to the app's queues."""

from __future__ import annotations

import pytest

from taskwarren.brokers.memory import MemoryBroker
from taskwarren.message import Envelope, encode, failure_summary
from taskwarren.web import data
from tests.web.conftest import Site

#: A body whose decoding overflows the stack (json raises RecursionError).
NESTED = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def put_dead(site: Site, body: bytes, task: str = "shop.ship") -> str:
    """A dead letter with ``body`` on queue ``shop`` of the site's in-memory broker."""
    broker = site.app.broker
    assert isinstance(broker, MemoryBroker)
    envelope = encode(task, "shop", body)
    broker._queue("shop").dead.append(envelope)
    return envelope.message_id


def test_one_poison_dead_letter_does_not_break_the_queue_pages(sqlite_site: Site) -> None:
    site = sqlite_site
    poison = put_dead(site, NESTED)
    client = site.login()

    page = client.get("/queues/shop")
    data = client.get("/api/queues/shop")
    purge = client.get("/queues/shop/purge")

    assert page.status_code == 200 and data.status_code == 200 and purge.status_code == 200
    assert page.text.count('data-testid="dead-letter-row"') == 3
    (shown,) = [d for d in data.json()["dead_letters"] if d["id"] == poison]
    assert shown["arguments"].startswith('{"a": [[[')
    assert len(shown["arguments"]) < 5000
    assert 'data-count="3"' in purge.text


def test_a_dead_letter_whose_headers_do_not_read_is_shown_from_its_body(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    odd = put_dead(site, b'{"note": "odd"}')

    def summary(envelope: Envelope) -> tuple[str, str, str]:
        if envelope.message_id == odd:
            raise RecursionError("headers nested too deep")
        return failure_summary(envelope)

    monkeypatch.setattr(data, "failure_summary", summary)
    letters = site.client.get("/api/queues/shop").json()["dead_letters"]

    assert len(letters) == 3
    (shown,) = [d for d in letters if d["id"] == odd]
    assert shown["arguments"] == '{"note": "odd"}' and shown["task"] == ""
