"""Sessions end for good at logout, whoever holds the old cookie; what a visitor sends
before being known (cookies, CSRF tokens, bodies) never makes the dashboard fail."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from taskwarren.errors import StoreError
from taskwarren.web import actions, forms
from taskwarren.web import auth as auth_module
from taskwarren.web.auth import Auth, Session
from taskwarren.web.paging import JobsPage
from tests.web.conftest import TOKEN, Site, job_json


def test_the_old_cookie_is_refused_after_logout(sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login(TestClient(site.web))
    old = client.cookies["tw_session"]
    csrf = site.csrf(client)

    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code \
        == 303
    replayed = TestClient(site.web, cookies={"tw_session": old})
    session = replayed.get("/api/session").json()
    cancel = replayed.post(f"/jobs/{site.queued}/cancel", data={"csrf": csrf})
    cancel_api = replayed.post(f"/api/jobs/{site.queued}/cancel",
                               headers={"X-CSRF-Token": csrf})

    assert session["logged_in"] is False
    assert cancel.status_code == 403 and cancel_api.status_code == 403
    assert job_json(site, site.queued)["state"] == "queued"
    other = site.login(TestClient(site.web))  # a new login still works
    assert other.get("/api/session").json()["logged_in"] is True


def test_ended_sessions_are_bounded_and_letting_one_go_revives_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_module, "MAX_ENDED", 3)
    auth = Auth("a-token-long-enough-for-the-dashboard-0123")
    now = time.time()
    sessions = [Session(f"s{i}", True, now - 100 + i) for i in range(5)]
    for session in sessions:
        auth.end(session)

    assert len(auth._ended) == 3
    value = auth.new_session(logged_in=True)[1]
    assert auth._cookie(value) is not None  # issued after: still good
    for session in sessions:  # each one ended, kept or let go
        body = f"{session.id}.{int(session.issued_at)}.1"
        forged = f"{body}.{auth._sign('session' + chr(0) + body)}"
        assert auth._cookie(forged) is None, session.id


def test_an_action_knows_the_visitor_before_it_reads_the_body(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    reads: list[str] = []
    real = actions.read_fields

    async def spying(request: Any) -> dict[str, Any]:
        reads.append(request.url.path)
        return await real(request)

    monkeypatch.setattr(actions, "read_fields", spying)
    anonymous = TestClient(site.web)
    for path in (f"/jobs/{site.queued}/cancel", "/api/queues/shop/purge", "/logout"):
        assert anonymous.post(path, data={"csrf": "x"}).status_code == 403
    assert anonymous.post("/login", data={"token": TOKEN}).status_code == 403  # no cookie
    assert reads == []

    client = site.login(TestClient(site.web))
    too_big = client.post(f"/jobs/{site.queued}/cancel",
                          content=b"csrf=" + b"x" * (forms.MAX_BODY_BYTES + 1),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert too_big.status_code == 413
    assert job_json(site, site.queued)["state"] == "queued"


def test_a_body_is_refused_as_soon_as_it_passes_the_cap_while_it_streams() -> None:
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []},
                      receive)
    with pytest.raises(forms.BadBody) as refused:
        asyncio.run(forms.read_body(request))

    assert refused.value.status == 413
    assert sent == forms.MAX_BODY_BYTES // 65536 + 1


def test_a_csrf_token_or_cookie_that_is_not_ascii_is_refused_not_a_500(
        sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login(TestClient(site.web))
    cookie = client.cookies["tw_session"]

    field = client.post(f"/jobs/{site.queued}/cancel", data={"csrf": "é" * 64})
    header = client.post(f"/api/jobs/{site.queued}/cancel",
                         headers={"X-CSRF-Token": "é".encode() * 64})
    forged = TestClient(site.web, raise_server_exceptions=False)
    odd_cookie = {"cookie": f"tw_session={cookie[:-1]}é".encode()}
    session = forged.get("/api/session", headers=odd_cookie)
    action = forged.post(f"/api/jobs/{site.queued}/cancel", headers=odd_cookie)

    assert field.status_code == 403 and header.status_code == 403
    assert session.status_code == 200 and session.json()["logged_in"] is False
    assert action.status_code == 403
    assert job_json(site, site.queued)["state"] == "queued"


def cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_odd_cursors_and_filters_are_a_400_on_every_database(site: Site) -> None:
    client = TestClient(site.web, raise_server_exceptions=False)
    cursors = [b'[1' + b'0' * 400 + b', "x"]', b'[NaN, "x"]', b'[1e999, "x"]',
               b'[1.0, "a\\u0000b"]', b"[" * 3_000]
    queries = [*("before=" + cursor(c) for c in cursors),
               "task=a%00b", "queue=%00", "state=dead%00"]
    for query in queries:
        assert client.get(f"/api/jobs?{query}").status_code == 400, query
        assert client.get(f"/jobs?{query}").status_code == 400, query
    assert client.get("/jobs/a%00b").status_code == 404
    assert client.get("/api/jobs/a%00b").status_code == 404


def test_anonymous_visitors_see_the_kind_of_a_failure_not_its_details(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    detail = "job store (postgresql://tw:***@db.internal:5432/prod): OperationalError: down"

    def failing() -> dict[str, int]:
        raise StoreError(detail)

    def failing_page(*args: Any) -> JobsPage:
        return JobsPage([], None, f"StoreError: {detail}")

    dashboard = site.web.state.web.dashboard
    monkeypatch.setattr(dashboard.counts, "_load", failing)
    monkeypatch.setattr(dashboard, "jobs_page", failing_page)
    with capture_logs() as logs:
        anonymous = [site.client.get(p) for p in ("/", "/api/overview", "/jobs", "/api/jobs")]
    site.login()
    logged_in = site.client.get("/api/overview").json()

    for answer in anonymous:
        assert "db.internal" not in answer.text and "prod" not in answer.text
        assert "StoreError" in answer.text
    assert anonymous[3].status_code == 503
    assert "details are shown once logged in" in anonymous[1].json()["jobs"]["problem"]
    assert logged_in["jobs"]["problem"] == f"StoreError: {detail}"
    assert [e["problem"] for e in logs if e["event"] == "web.problem"] == [
        f"StoreError: {detail}"]
