"""The dead letters a queue page shows: a poison message never breaks the list, what is
read and shown is bounded, and reading is cached and kept to the app's queues."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from taskwarren.brokers.memory import MemoryBroker
from taskwarren.message import Envelope, encode, failure_summary
from taskwarren.store.jobs import JobEvent
from taskwarren.web import app as web_app
from taskwarren.web import dead
from tests.web.conftest import TOKEN, Site

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

    monkeypatch.setattr(dead, "failure_summary", summary)
    letters = site.client.get("/api/queues/shop").json()["dead_letters"]

    assert len(letters) == 3
    (shown,) = [d for d in letters if d["id"] == odd]
    assert shown["arguments"] == '{"note": "odd"}' and shown["task"] == ""


def test_a_queue_page_shows_at_most_100_dead_letters_and_says_how_many_there_are(
        sqlite_site: Site) -> None:
    site = sqlite_site
    for i in range(105):
        put_dead(site, b'{"order_id": %d}' % i)

    page = site.client.get("/queues/shop").text
    answer = site.client.get("/api/queues/shop").json()

    assert page.count('data-testid="dead-letter-row"') == 100
    assert 'data-testid="dead-count" data-count="100" data-total="107"' in page
    assert "100 of 107" in page
    assert len(answer["dead_letters"]) == 100 and answer["dead_letters_total"] == 107


def test_a_huge_argument_is_cut_in_the_page_and_the_api(sqlite_site: Site) -> None:
    site = sqlite_site
    huge = put_dead(site, b'{"note": "' + b"x" * 1_000_000 + b'"}')
    put_dead(site, b'{"note": "' + b"x" * 50_000_000 + b'"}')  # past the size limit

    page = site.client.get("/queues/shop")
    answer = site.client.get("/api/queues/shop")

    assert len(page.content) < 100_000 and len(answer.content) < 100_000
    (shown,) = [d for d in answer.json()["dead_letters"] if d["id"] == huge]
    assert shown["arguments"].startswith('{"note": "xxx') and shown["arguments"].endswith("...")
    assert len(shown["arguments"]) <= dead.MAX_TEXT_CHARS


def test_the_jobs_api_cuts_long_texts_in_a_list_and_gives_them_whole_for_one_job(
        sqlite_site: Site) -> None:
    site = sqlite_site
    site.app.jobs.table().apply([JobEvent("big", "dead", 4e9, task="shop.ship", queue="shop",
                                          created_at=4e9, error="e" * 100_000,
                                          args='{"note": "' + "x" * 100_000 + '"}')])

    listed = site.client.get("/api/jobs?limit=1").json()["jobs"][0]
    whole = site.client.get("/api/jobs/big").json()

    assert listed["id"] == "big"
    assert len(listed["error"]) <= dead.MAX_TEXT_CHARS and listed["error"].endswith("...")
    assert len(listed["args"]) <= dead.MAX_TEXT_CHARS
    assert len(whole["error"]) == 100_000


def spy_reads(site: Site, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int | None]]:
    """Every read of dead letters from the site's broker: (queue, limit)."""
    reads: list[tuple[str, int | None]] = []
    real = site.app.broker.dead_letters

    def spying(queue: str, limit: int | None = None) -> list[Envelope]:
        reads.append((queue, limit))
        return real(queue, limit)

    monkeypatch.setattr(site.app.broker, "dead_letters", spying)
    return reads


def test_a_view_reads_at_most_100_dead_letters_from_the_broker(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = spy_reads(sqlite_site, monkeypatch)

    sqlite_site.client.get("/queues/shop")

    assert reads == [("shop", dead.MAX_SHOWN_DEAD)]


def test_a_queues_dead_letters_are_read_at_most_once_per_cache_time(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    reads = spy_reads(site, monkeypatch)
    cached = web_app(site.app, token=TOKEN, cache_s=5)
    try:
        client = site.login(TestClient(cached))
        for path in ("/queues/shop", "/api/queues/shop", "/queues/shop/purge",
                     "/queues/shop?task=shop.ship"):
            assert client.get(path).status_code == 200
        assert len(reads) == 1
        client.post("/queues/shop/replay", data={"csrf": site.csrf(client),
                                                "id": site.dead})
        letters = client.get("/api/queues/shop").json()["dead_letters"]
    finally:
        cached.state.web.dashboard.close()

    assert len(reads) == 2  # acting on them reads them afresh
    assert [d["id"] for d in letters] == [site.evil]


def test_anonymous_visitors_read_dead_letters_of_the_dashboards_queues_only(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    reads = spy_reads(site, monkeypatch)

    anonymous = [TestClient(site.web).get(p) for p in (
        "/queues/elsewhere", "/api/queues/elsewhere", "/queues/elsewhere/purge")]
    own = site.client.get("/queues/shop")
    site.login()
    logged_in = site.client.get("/api/queues/elsewhere")

    assert all(a.status_code == 200 for a in anonymous)
    assert "log in to read another queue" in anonymous[0].text
    assert "log in to read" in anonymous[1].json()["dead_letters_problem"]
    assert own.text.count('data-testid="dead-letter-row"') == 2
    assert logged_in.json()["dead_letters_problem"] is None
    assert reads == [("shop", dead.MAX_SHOWN_DEAD), ("elsewhere", dead.MAX_SHOWN_DEAD)]
