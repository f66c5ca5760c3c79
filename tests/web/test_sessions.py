"""Sessions end for good at logout, whoever holds the old cookie; what a visitor sends
before being known (cookies, CSRF tokens, bodies) never makes the dashboard fail."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from taskwarren.web import auth as auth_module
from taskwarren.web.auth import Auth, Session
from tests.web.conftest import Site, job_json


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
