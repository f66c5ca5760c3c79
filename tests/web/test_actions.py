"""Actions: every mutating route refuses without the token and without a CSRF token, works
with both, goes through the CLI's code paths, and is logged without the token."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from taskwarren.testing import project
from tests.web.conftest import TOKEN, Site, add_dead, form_csrf, job_json

#: The mutating routes the dashboard has: a new one must be added here, and so tested.
MUTATING = {
    ("POST", "/login"), ("POST", "/logout"),
    ("POST", "/jobs/{job_id:path}/cancel"), ("POST", "/jobs/{job_id:path}/retry"),
    ("POST", "/queues/{name:path}/replay"), ("POST", "/queues/{name:path}/purge"),
    ("POST", "/api/jobs/{job_id:path}/cancel"), ("POST", "/api/jobs/{job_id:path}/retry"),
    ("POST", "/api/queues/{name:path}/replay"), ("POST", "/api/queues/{name:path}/purge"),
}


#: Every method a route may answer; a route that names none (``methods=None``, as a
#: class-based ``HTTPEndpoint`` has) answers them all.
ALL_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
#: The methods that change something.
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def mutating_routes(site: Site) -> Iterator[tuple[str, str]]:
    """(method, path template) of every route that answers anything but GET and HEAD."""
    for route in site.web.routes:
        assert isinstance(route, Route)
        methods = ALL_METHODS if route.methods is None else route.methods
        for method in sorted(methods - {"GET", "HEAD", "OPTIONS"}):
            yield method, route.path


def concrete(site: Site, path: str) -> str:
    """``path`` with a job or queue that the route's action can act on."""
    job = site.dead if path.endswith("/retry") else site.queued
    path = path.replace("{job_id:path}", job).replace("{name:path}", "shop")
    return re.sub(r"\{[^}]*\}", "x", path)


def body(path: str, csrf: str | None, token: str | None = None) -> dict[str, Any]:
    """The fields a route needs to succeed (all dead letters; a confirmed purge)."""
    fields: dict[str, Any] = {"all": "1", "expect": "2", "confirm": "yes", "next": "/"}
    if token is not None:
        fields["token"] = token
    if csrf is not None:
        fields["csrf"] = csrf
    return fields


def send(client: TestClient, method: str, path: str, fields: dict[str, Any],
         headers: dict[str, str] | None = None) -> Any:
    if path.startswith("/api/"):
        as_json = {k: True if k in ("all", "confirm") else int(v) if k == "expect" else v
                   for k, v in fields.items()}
        return client.request(method, path, json=as_json, headers=headers,
                              follow_redirects=False)
    return client.request(method, path, data=fields, headers=headers, follow_redirects=False)


def test_the_router_has_exactly_the_mutating_routes_this_test_knows(sqlite_site: Site) -> None:
    assert set(mutating_routes(sqlite_site)) == MUTATING


def test_every_route_refuses_an_anonymous_write_with_403_or_405(sqlite_site: Site) -> None:
    site = sqlite_site
    anonymous = TestClient(site.web)
    anon_csrf = form_csrf(anonymous.get("/login").text)
    for route in site.web.routes:
        assert isinstance(route, Route)
        path = concrete(site, route.path)
        for method in WRITES:
            for client in (anonymous, TestClient(site.web)):
                answer = send(client, method, path, body(path, anon_csrf))
                assert answer.status_code in (403, 405), (method, route.path, answer.text)
    assert_nothing_changed(site)


def test_every_mutating_route_refuses_a_request_without_the_token(sqlite_site: Site) -> None:
    site = sqlite_site
    anonymous = TestClient(site.web)
    anon_csrf = form_csrf(anonymous.get("/login").text)  # a valid anonymous session
    for method, template in mutating_routes(site):
        path = concrete(site, template)
        wrong = "not-the-token-at-all-but-long-enough"
        no_token = send(anonymous, method, path, body(path, anon_csrf))
        wrong_bearer = send(TestClient(site.web), method, path, body(path, anon_csrf),
                            {"Authorization": f"Bearer {wrong}"})
        wrong_form = send(anonymous, method, path, body(path, anon_csrf, wrong))
        for answer in (no_token, wrong_bearer, wrong_form):
            assert answer.status_code == 403, (method, path, answer.text)
    assert_nothing_changed(site)


def test_every_mutating_route_refuses_the_token_without_a_csrf_token(sqlite_site: Site) -> None:
    site = sqlite_site
    logged_in = site.login(TestClient(site.web))
    other = site.login(TestClient(site.web))
    foreign_csrf = site.csrf(other)  # bound to another session: refused too
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for method, template in mutating_routes(site):
        path = concrete(site, template)
        token = TOKEN if template == "/login" else None
        fresh = TestClient(site.web)
        fresh.get("/login")  # an anonymous session, but its CSRF token not sent
        answers = [send(logged_in, method, path, body(path, None, token)),
                   send(logged_in, method, path, body(path, foreign_csrf, token)),
                   send(logged_in, method, path, body(path, "0" * 64, token)),
                   send(TestClient(site.web), method, path, body(path, None, token), bearer),
                   send(fresh, method, path, body(path, None, token))]
        for answer in answers:
            assert answer.status_code == 403, (method, path, answer.text)
    assert_nothing_changed(site)


def assert_nothing_changed(site: Site) -> None:
    assert job_json(site, site.queued)["state"] == "queued"
    assert job_json(site, site.dead)["state"] == "dead"
    assert site.client.get("/api/queues/shop").json()["queue"]["dead"] == 2


def dead_count(site: Site) -> int:
    found: int = site.client.get("/api/queues/shop").json()["queue"]["dead"]
    return found


def prepared(site: Site, template: str) -> tuple[str, dict[str, Any], Callable[[], None]]:
    """A path for ``template``, the fields its action needs beyond the CSRF token, and a
    check that the action happened (each route acts on targets of its own)."""
    if template.endswith("/cancel"):
        job = site.later.send(len(template))
        project(site.app)
        return template.replace("{job_id:path}", job), {}, lambda: assert_state(
            site, job, "cancelled")
    if template.endswith("/retry"):
        (job,) = add_dead(site, 1)
        project(site.app)
        assert job_json(site, job)["state"] == "dead"
        return template.replace("{job_id:path}", job), {}, lambda: assert_state(
            site, job, "queued")
    add_dead(site, 2)
    count = dead_count(site)
    ready = site.client.get("/api/queues/shop").json()["queue"]["ready"]

    def emptied() -> None:
        assert dead_count(site) == 0
        after = site.client.get("/api/queues/shop").json()["queue"]["ready"]
        assert after == ready + (count if template.endswith("/replay") else 0)

    fields = {"all": "1", "expect": str(count), "confirm": "yes"}
    return template.replace("{name:path}", "shop"), fields, emptied


def assert_state(site: Site, job: str, state: str) -> None:
    assert job_json(site, job)["state"] == state, job


@pytest.mark.parametrize("how", ["session", "bearer"])
def test_every_mutating_route_does_its_action_with_the_token_and_the_csrf_token(
        sqlite_site: Site, how: str) -> None:
    site = sqlite_site
    for method, template in mutating_routes(site):
        client = TestClient(site.web)
        if template == "/login":
            csrf = form_csrf(client.get("/login").text)
            answer = send(client, method, template, body(template, csrf, TOKEN))
            assert answer.status_code == 303, answer.text
            assert client.get("/api/session").json()["logged_in"] is True
            continue
        headers = None
        if how == "session":
            site.login(client)
            csrf = site.csrf(client)
        else:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            csrf = client.get("/api/session", headers=headers).json()["csrf"]
        if template == "/logout":
            old = client.cookies.get("tw_session")
            answer = send(client, method, template, {"csrf": csrf}, headers)
            assert answer.status_code == 303, answer.text
            if old is not None:  # a Bearer request has no session to end
                ended = TestClient(site.web, cookies={"tw_session": old})
                assert ended.get("/api/session").json()["logged_in"] is False
            continue
        path, fields, happened = prepared(site, template)
        answer = send(client, method, path, {**fields, "csrf": csrf}, headers)
        assert answer.status_code in (200, 303), (method, path, answer.text)
        happened()


def test_cancel_goes_through_app_jobs_and_says_what_happened(sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login()
    csrf = site.csrf(client)

    first = client.post(f"/jobs/{site.queued}/cancel", data={"csrf": csrf})
    again = client.post(f"/api/jobs/{site.ok[0]}/cancel", headers={"X-CSRF-Token": csrf})

    assert first.status_code == 200
    assert 'data-done="true"' in first.text
    assert job_json(site, site.queued)["state"] == "cancelled"
    assert again.status_code == 409
    assert again.json()["done"] is False and again.json()["state"] == "succeeded"


def test_retry_runs_a_dead_job_again_and_refuses_a_live_one(site: Site) -> None:
    client = site.login()
    csrf = site.csrf(client)

    done = client.post(f"/jobs/{site.dead}/retry", data={"csrf": csrf})
    refused = client.post(f"/api/jobs/{site.queued}/retry", headers={"X-CSRF-Token": csrf})

    assert done.status_code == 200, done.text
    job = job_json(site, site.dead)
    assert job["state"] == "queued" and job["attempt"] == 0
    assert refused.status_code == 409
    assert "only a dead or cancelled job runs again" in refused.json()["message"]


def test_replay_sends_one_dead_letter_back_and_purge_deletes_the_rest(site: Site) -> None:
    client = site.login()
    csrf = site.csrf(client)

    replayed = client.post("/queues/shop/replay", data={"csrf": csrf, "id": site.dead})
    unconfirmed = client.post("/queues/shop/purge", data={"csrf": csrf, "all": "1"})
    purged = client.post("/api/queues/shop/purge",
                         json={"all": True, "expect": 1, "confirm": True},
                         headers={"X-CSRF-Token": csrf})

    assert "replayed 1" in replayed.text
    assert unconfirmed.status_code == 400
    assert purged.json()["count"] == 1
    stats = client.get("/api/queues/shop").json()["queue"]
    assert (stats["ready"], stats["dead"]) == (1, 0)


def test_replay_without_naming_dead_letters_is_a_400(sqlite_site: Site) -> None:
    client = sqlite_site.login()

    answer = client.post("/queues/shop/replay", data={"csrf": sqlite_site.csrf(client)})

    assert answer.status_code == 400
    assert client.get("/api/queues/shop").json()["queue"]["dead"] == 2


def test_a_read_only_dashboard_offers_no_action_and_refuses_them_all(
        read_only_site: Site) -> None:
    site = read_only_site
    pages = ["/", "/jobs", f"/jobs/{site.dead}", f"/jobs/{site.queued}", "/queues/shop",
             "/queues/shop/purge", "/workers", "/schedules", "/login"]
    for path in pages:
        text = site.client.get(path).text
        assert 'method="post"' not in text, path
        assert not re.search(r'data-testid="(cancel-|retry-|replay-|purge-(all|one|confirm))',
                             text), path
    assert 'data-mode="read-only"' in site.client.get("/").text
    assert site.client.get("/api/session").json() == {"read_only": True, "logged_in": False,
                                                      "csrf": None}
    for method, template in mutating_routes(site):
        path = concrete(site, template)
        answer = send(site.client, method, path, body(path, "x", "y" * 20),
                      {"Authorization": "Bearer " + "y" * 20})
        assert answer.status_code == 403, path
    assert_nothing_changed(site)


def test_a_dashboard_with_a_token_shows_actions_only_after_login(sqlite_site: Site) -> None:
    site = sqlite_site
    locked = site.client.get(f"/jobs/{site.queued}").text
    site.login()
    unlocked = site.client.get(f"/jobs/{site.queued}").text
    dead = site.client.get(f"/jobs/{site.dead}").text

    assert 'data-testid="cancel-button"' not in locked and 'data-testid="login-hint"' in locked
    assert 'data-testid="cancel-button"' in unlocked
    assert 'data-testid="retry-button"' not in unlocked
    assert 'data-testid="retry-button"' in dead


def test_login_refuses_a_wrong_token_and_never_redirects_off_site(sqlite_site: Site) -> None:
    client = TestClient(sqlite_site.web)
    csrf = form_csrf(client.get("/login").text)

    wrong = client.post("/login", data={"token": "x" * 40, "csrf": csrf})
    off_site = client.post("/login", data={"token": TOKEN, "csrf": csrf,
                                           "next": "//evil.example/"}, follow_redirects=False)

    assert wrong.status_code == 403
    assert off_site.status_code == 303 and off_site.headers["location"] == "/"
    cookie = off_site.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/" in cookie and TOKEN not in cookie


def test_a_forged_or_tampered_session_cookie_is_not_logged_in(sqlite_site: Site) -> None:
    client = sqlite_site.login(TestClient(sqlite_site.web))
    value = client.cookies["tw_session"]
    sid, issued, _, signature = value.split(".")
    for forged in (f"{sid}.{issued}.1.{'0' * 64}", f"{sid}x.{issued}.1.{signature}",
                   f"{sid}.{int(issued) - 13 * 3600}.1.{signature}", "garbage"):
        other = TestClient(sqlite_site.web, cookies={"tw_session": forged})
        assert other.get("/api/session").json()["logged_in"] is False


def test_logout_ends_the_session(sqlite_site: Site) -> None:
    client = sqlite_site.login(TestClient(sqlite_site.web))

    answer = client.post("/logout", data={"csrf": sqlite_site.csrf(client)},
                         follow_redirects=False)

    assert answer.status_code == 303
    assert client.get("/api/session").json()["logged_in"] is False


def test_actions_are_logged_with_who_and_what_and_never_the_token(
        sqlite_site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site = sqlite_site
    with capture_logs() as logs:
        client = site.login(TestClient(site.web))
        csrf = site.csrf(client)
        client.post(f"/jobs/{site.queued}/cancel", data={"csrf": csrf})
        client.post(f"/jobs/{site.queued}/cancel", data={"csrf": "wrong"})
        TestClient(site.web).post("/login", data={"token": TOKEN, "csrf": "nope"})
        client.post("/queues/shop/replay", data={"csrf": csrf, "all": "1", "expect": "2"})

    actions = [e for e in logs if e["event"] == "web.action"]
    assert [(e["action"], e["outcome"]) for e in actions] == [
        ("login", "done"), ("cancel", "done"), ("cancel", "refused"), ("login", "refused"),
        ("replay", "done")]
    assert actions[1]["target"] == site.queued
    assert all(e["client"] == "testclient" for e in actions)
    session_id = client.cookies["tw_session"].split(".")[0]
    mine = {e["who"] for e in actions if e["action"] != "login" or e["outcome"] == "done"}
    assert len(mine) == 1 and re.fullmatch(r"[0-9a-f]{12}", mine.pop() or "")
    assert session_id not in repr(logs)
    with capture_logs() as bearer_logs:
        TestClient(site.web).post(f"/api/jobs/{site.ok[0]}/cancel",
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert [e["who"] for e in bearer_logs if e["event"] == "web.action"] == ["bearer"]
    assert TOKEN not in repr(logs)
    out = capsys.readouterr()
    assert TOKEN not in out.out and TOKEN not in out.err


def test_the_token_never_appears_in_a_page_a_header_or_the_api(sqlite_site: Site) -> None:
    site = sqlite_site
    client = site.login(TestClient(site.web))
    paths = ["/", "/jobs", f"/jobs/{site.dead}", "/queues", "/queues/shop",
             "/queues/shop/purge", "/workers", "/schedules", "/login", "/api/overview",
             "/api/jobs", f"/api/jobs/{site.dead}", "/api/queues", "/api/queues/shop",
             "/api/workers", "/api/schedules", "/api/session", "/healthz"]
    for path in paths:
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert TOKEN not in answer.text and TOKEN not in str(answer.headers), path
    assert TOKEN not in repr(site.app.settings)
