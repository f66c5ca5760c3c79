"""Purging or replaying "all" acts on the dead letters the page showed, never on more: the
confirm form carries their ids (or, past a cap, the count it showed, checked again)."""

from __future__ import annotations

import html
import re

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from taskwarren.errors import BrokerConnectionError
from taskwarren.message import Envelope
from taskwarren.web import app as web_app
from taskwarren.web import pages
from tests.web.conftest import TOKEN, Site, add_dead, form_fields


def dead_count(client: TestClient) -> int:
    found: int = client.get("/api/queues/shop").json()["queue"]["dead"]
    return found


def test_purge_all_deletes_only_the_dead_letters_the_confirm_page_showed(
        sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login()
    page = client.get("/queues/shop/purge").text
    fields = form_fields(page, "purge-confirm-form")
    assert fields is not None and 'data-count="2"' in page
    assert set(fields["id"]) == {site.dead, site.evil} and "all" not in fields

    add_dead(site, 5)  # they arrive while the visitor reads the page
    answer = client.post("/queues/shop/purge", data=fields)

    assert answer.status_code == 200, answer.text
    assert "purged 2" in answer.text
    assert dead_count(client) == 5


def test_replay_all_replays_only_the_dead_letters_the_queue_page_showed(
        sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login()
    fields = form_fields(client.get("/queues/shop").text, "replay-all-form")
    assert fields is not None and set(fields["id"]) == {site.dead, site.evil}

    add_dead(site, 3)
    answer = client.post("/queues/shop/replay", data=fields)

    assert "replayed 2" in answer.text
    assert dead_count(client) == 3


def test_past_the_cap_the_forms_carry_the_count_shown_and_a_changed_count_is_a_409(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    monkeypatch.setattr(pages, "MAX_FORM_IDS", 1)
    client = site.login()
    purge = form_fields(client.get("/queues/shop/purge").text, "purge-confirm-form")
    replay = form_fields(client.get("/queues/shop").text, "replay-all-form")
    assert purge is not None and replay is not None
    assert (purge["all"], purge["expect"]) == (["1"], ["2"]) and "id" not in purge
    assert (replay["all"], replay["expect"]) == (["1"], ["2"]) and "id" not in replay

    add_dead(site, 1)
    moved = client.post("/queues/shop/purge", data=purge)
    moved_api = client.post("/api/queues/shop/replay", json={"all": True, "expect": 2},
                            headers={"X-CSRF-Token": site.csrf(client)})

    assert moved.status_code == 409 and "3 dead letters now" in moved.text
    assert moved_api.status_code == 409 and moved_api.json()["done"] is False
    assert dead_count(client) == 3
    done = client.post("/queues/shop/purge", data={**purge, "expect": "3"})
    assert "purged 3" in done.text and dead_count(client) == 0


def test_all_without_the_count_seen_is_refused(sqlite_site: Site) -> None:
    client = sqlite_site.login()
    csrf = sqlite_site.csrf(client)

    purge = client.post("/api/queues/shop/purge", json={"all": True, "confirm": True},
                        headers={"X-CSRF-Token": csrf})
    replay = client.post("/queues/shop/replay", data={"csrf": csrf, "all": "1"})

    assert purge.status_code == 400 and "expect" in purge.json()["error"]
    assert replay.status_code == 400
    assert dead_count(client) == 2


def test_no_confirm_form_when_the_dead_letters_could_not_be_read_or_there_are_none(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    client = site.login()

    def down(queue: str, limit: int | None = None) -> list[Envelope]:
        raise BrokerConnectionError("broker down")

    monkeypatch.setattr(site.app.broker, "dead_letters", down)
    failed = client.get("/queues/shop/purge").text
    monkeypatch.undo()
    empty = client.get("/queues/later/purge").text

    assert 'data-testid="dead-letters-problem"' in failed
    assert form_fields(failed, "purge-confirm-form") is None
    assert "This deletes 0" not in failed
    assert form_fields(empty, "purge-confirm-form") is None
    assert 'data-testid="purge-nothing"' in empty
    assert dead_count(client) == 2


def test_purge_these_links_by_task_and_the_confirm_page_names_their_ids(
        sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login()

    page = client.get("/queues/shop?task=shop.ship").text
    link = re.search(r'href="([^"]+)">Purge these', page)
    assert link is not None and html.unescape(link.group(1)) == "/queues/shop/purge?task=shop.ship"
    confirm = client.get(html.unescape(link.group(1))).text
    fields = form_fields(confirm, "purge-confirm-form")

    assert 'data-count="1"' in confirm
    assert fields is not None and fields["id"] == [site.dead]


def test_a_queue_or_job_named_like_a_route_is_not_taken_for_the_route(
        sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login()

    queue = client.get("/queues/x%2Fpurge")
    confirm = client.get("/queues/x%2Fpurge/purge")
    cancel = client.post(f"/jobs/{site.queued}%2Fcancel", data={"csrf": site.csrf(client)})

    assert 'data-testid="queue-name">x/purge<' in queue.text
    assert 'data-testid="purge-count"' not in queue.text
    assert 'action="/queues/x%2Fpurge/replay"' not in queue.text  # no dead letters there
    assert 'data-testid="queue-name">x/purge<' in confirm.text
    assert cancel.status_code == 404
    assert client.get(f"/api/jobs/{site.queued}").json()["state"] == "queued"


def test_an_app_that_mounts_the_dashboard_can_close_it(sqlite_site: Site) -> None:
    mounted = web_app(sqlite_site.app, token=TOKEN)
    outer = Starlette(routes=[Mount("/ops", app=mounted)])
    with TestClient(outer) as client:
        assert client.get("/ops/healthz").status_code == 200

    mounted.state.close()

    assert mounted.state.web.dashboard.executor._shutdown
