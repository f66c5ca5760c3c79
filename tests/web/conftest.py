"""The dashboard on a real job store (SQLite, PostgreSQL, MariaDB) and the in-memory broker.

A :class:`Site` is an app with a few jobs in every interesting state (one of them
hostile: a task named and failing with ``<script>``, an argument that closes an
attribute), its dead letters, and the dashboard over it, driven with Starlette's
``TestClient``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from taskwarren import Warren
from taskwarren.store import open_store
from taskwarren.testing import join, project
from taskwarren.web import app as web_app

#: The token of the sites that allow actions (never to appear in a page or a log).
TOKEN = "s3cret-token-that-must-never-show-0123456789"
#: Hostile texts: a task name and an error, and an argument that leaves an attribute.
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


class Site:
    """An app with jobs and dead letters, and its dashboard.

    Args:
        store_url: a fresh job store.
        token: the dashboard's token (``None``: read-only).
    """

    def __init__(self, store_url: str, token: str | None = TOKEN) -> None:
        store = open_store(store_url)
        store.init()
        store.close()
        self.app = Warren(url="memory://", store_url=store_url)

        def ship(order_id: int) -> None:
            if order_id < 0:
                raise RuntimeError(f"carrier down for {order_id}")

        def hostile(note: str) -> None:
            raise ValueError(SCRIPT)

        self.ship = self.app.task(ship, name="shop.ship", queue="shop")
        self.hostile = self.app.task(hostile, name=SCRIPT, queue="shop")
        self.later = self.app.task(ship, name="shop.later", queue="later")
        self.ok = [self.ship.send(i) for i in range(3)]
        self.dead = self.ship.send(-1)
        self.evil = self.hostile.send(IMG)
        join(self.app, ["shop"], fail_on_error=False)
        self.queued = self.later.send(7)  # nobody runs "later": it stays queued
        project(self.app)
        self.token = token
        self.web = web_app(self.app, token=token, cache_s=0)
        self.client = TestClient(self.web)

    def login(self, client: TestClient | None = None) -> TestClient:
        """``client`` (default: the site's) logged in through the form."""
        client = client or self.client
        csrf = form_csrf(client.get("/login").text)
        answer = client.post("/login", data={"token": self.token, "csrf": csrf, "next": "/"},
                             follow_redirects=False)
        assert answer.status_code == 303, answer.text
        return client

    def csrf(self, client: TestClient | None = None) -> str:
        """The CSRF token of ``client``'s session (as the pages give it)."""
        found = (client or self.client).get("/api/session").json()["csrf"]
        assert isinstance(found, str)
        return found

    def close(self) -> None:
        """Close the client, the dashboard's threads and the app's connections."""
        self.client.close()
        self.web.state.web.dashboard.close()
        self.app.close()


def form_csrf(page: str) -> str:
    """The value of the first ``csrf`` hidden field in ``page``."""
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start:page.index('"', start)]


@pytest.fixture
def site(store_url: str) -> Iterator[Site]:
    """A site on each database, with a token."""
    made = Site(store_url)
    yield made
    made.close()


@pytest.fixture
def sqlite_site(tmp_path: Path) -> Iterator[Site]:
    """A site on SQLite only (for what does not depend on the database), with a token."""
    made = Site(f"sqlite:///{tmp_path / 'store.db'}")
    yield made
    made.close()


@pytest.fixture
def read_only_site(tmp_path: Path) -> Iterator[Site]:
    """A site without a token."""
    made = Site(f"sqlite:///{tmp_path / 'store.db'}", token=None)
    yield made
    made.close()


def job_json(site: Site, task_id: str) -> dict[str, Any]:
    """The job as ``/api/jobs/<id>`` gives it."""
    answer = site.client.get(f"/api/jobs/{task_id}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def form_fields(page: str, form_id: str) -> dict[str, list[str]] | None:
    """The hidden fields of the form ``form_id`` in ``page`` (``None``: no such form)."""
    found = re.search(rf'<form [^>]*id="{re.escape(form_id)}"[^>]*>(.*?)</form>', page, re.S)
    if found is None:
        return None
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">',
                                  found.group(1)):
        fields.setdefault(name, []).append(html.unescape(value))
    return fields


def add_dead(site: Site, n: int) -> list[str]:
    """``n`` more dead letters on queue ``shop`` (their ids)."""
    ids = [site.ship.send(-100 - i) for i in range(n)]
    join(site.app, ["shop"], fail_on_error=False)
    return ids
