"""Every page renders what the job store, the broker and the schedules hold, and the JSON
API gives the same data in the shapes :mod:`taskwarren.web` documents."""

from __future__ import annotations

import time
from datetime import timedelta

from starlette.testclient import TestClient

from taskwarren.brokers.capabilities import Announcer, require
from taskwarren.schedules import schedule_specs
from taskwarren.store import open_store
from taskwarren.store.schedules import ScheduleTable
from tests.web.conftest import Site, job_json


def test_healthz_answers_ok(sqlite_site: Site) -> None:
    answer = sqlite_site.client.get("/healthz")

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_the_overview_counts_jobs_per_state_and_shows_the_queues(site: Site) -> None:
    page = site.client.get("/")

    assert page.status_code == 200
    assert 'data-testid="count-succeeded" data-live="jobs.counts.succeeded">3<' in page.text
    assert 'data-testid="count-dead" data-live="jobs.counts.dead">2<' in page.text
    assert 'data-testid="count-queued" data-live="jobs.counts.queued">1<' in page.text
    assert 'data-queue="shop"' in page.text and 'data-queue="later"' in page.text
    assert 'data-testid="source" data-source="memory"' in page.text
    assert "/static/dashboard.js" in page.text


def test_the_overview_api_has_the_documented_shape(site: Site) -> None:
    data = site.client.get("/api/overview").json()

    assert set(data) == {"jobs", "queues", "pools", "schedules", "generated_at"}
    assert data["jobs"]["counts"]["succeeded"] == 3
    assert data["jobs"]["total"] == 6
    assert data["jobs"]["problem"] is None
    later = next(q for q in data["queues"] if q["name"] == "later")
    assert set(later) == {"name", "ready", "unacked", "consumers", "dead", "delayed", "rates",
                          "source", "source_label", "note", "problem"}
    assert later["ready"] == 1
    assert later["rates"] == {"publish": None, "deliver": None, "ack": None}
    assert data["pools"] == {"count": 0, "processes": 0, "problem": None}
    assert data["schedules"] == {"count": 0, "problem": None}


def test_the_jobs_page_lists_newest_first_with_links_to_each(site: Site) -> None:
    page = site.client.get("/jobs")

    assert page.status_code == 200
    assert page.text.count('data-testid="job-row"') == 6
    # The last sent comes first.
    assert page.text.index(site.queued) < page.text.index(site.ok[0])
    assert f'href="/jobs/{site.dead}"' in page.text


def test_the_jobs_page_filters_by_state_task_queue_and_time(site: Site) -> None:
    client = site.client

    def ids(query: str) -> set[str]:
        return {j["id"] for j in client.get(f"/api/jobs?{query}").json()["jobs"]}

    assert ids("state=dead") == {site.dead, site.evil}
    assert ids("task=shop.ship") == {*site.ok, site.dead}
    assert ids("queue=later") == {site.queued}
    assert ids("state=succeeded&task=shop.ship&queue=shop") == set(site.ok)
    assert len(ids("since=1h")) == 6
    assert ids(f"since={time.strftime('%Y-%m-%dT%H:%M', time.gmtime(time.time() + 3600))}") \
        == set()
    page = client.get("/jobs?state=dead")
    assert page.text.count('data-testid="job-row"') == 2
    assert '<option value="dead" selected>' in page.text


def test_a_bad_filter_is_a_400_that_says_what_to_give(site: Site) -> None:
    for query in ("state=exploded", "since=yesterday", "limit=0", "before=%%%"):
        answer = site.client.get(f"/jobs?{query}")
        assert answer.status_code == 400, query
        assert 'data-testid="problem"' in answer.text
        assert site.client.get(f"/api/jobs?{query}").status_code == 400


def test_a_job_page_shows_arguments_attempt_timings_worker_error_and_traceback(
        site: Site) -> None:
    page = site.client.get(f"/jobs/{site.dead}")

    assert page.status_code == 200
    assert 'data-testid="job-state">dead<' in page.text
    assert 'data-testid="job-attempt">0<' in page.text
    assert "&#34;order_id&#34;: -1" in page.text  # the arguments, indented JSON
    assert "RuntimeError: carrier down for -1" in page.text
    assert 'data-testid="job-traceback"' in page.text and "Traceback" in page.text
    job = job_json(site, site.dead)
    assert job["worker"] and job["worker"] in page.text
    assert job["started_at"] is not None and job["finished_at"] is not None


def test_an_unknown_job_is_a_404(site: Site) -> None:
    assert site.client.get("/jobs/no-such-job").status_code == 404
    assert site.client.get("/api/jobs/no-such-job").json() == {"error": "no such job in the store"}


def test_the_job_api_gives_every_column_as_jobs_show_json_does(site: Site) -> None:
    job = job_json(site, site.ok[0])

    assert set(job) == {"id", "task", "queue", "state", "attempt", "created_at",
                        "scheduled_at", "started_at", "finished_at", "duration_s", "worker",
                        "error", "traceback", "args", "unique_key", "updated_at"}
    assert job["state"] == "succeeded" and job["args"] == '{"order_id":0}'
    assert job["created_at"].endswith("+00:00")


def test_a_queue_page_shows_its_figures_their_source_and_its_dead_letters(site: Site) -> None:
    page = site.client.get("/queues/shop")

    assert page.status_code == 200
    assert 'data-testid="stat-dead">2<' in page.text
    assert 'data-testid="source" data-source="memory"' in page.text
    assert "in-memory broker" in page.text
    assert page.text.count('data-testid="dead-letter-row"') == 2
    assert "carrier down for -1" in page.text
    assert 'data-testid="rate-publish">-<' in page.text  # rates: management API only
    data = site.client.get("/api/queues/shop").json()
    assert data["queue"]["dead"] == 2
    assert {d["id"] for d in data["dead_letters"]} == {site.dead, site.evil}
    assert set(data["dead_letters"][0]) == {"id", "task", "attempt", "error_type", "error",
                                            "failed_at", "reason", "arguments"}


def test_a_queue_page_filters_its_dead_letters_by_task(site: Site) -> None:
    page = site.client.get("/queues/shop?task=shop.ship")

    assert page.text.count('data-testid="dead-letter-row"') == 1
    assert 'data-count="1" data-total="2"' in page.text


def test_the_purge_page_shows_the_count_before_the_confirm_step_and_deletes_nothing(
        site: Site) -> None:
    client = site.login()

    every = client.get("/queues/shop/purge")
    one = client.get(f"/queues/shop/purge?id={site.dead}")

    assert 'data-testid="purge-count" data-count="2"' in every.text
    assert 'data-testid="purge-count" data-count="1"' in one.text
    assert 'data-testid="purge-confirm-form"' in one.text
    assert client.get("/api/queues/shop").json()["queue"]["dead"] == 2


def test_the_queues_page_lists_the_apps_queues_and_opens_one_by_name(site: Site) -> None:
    page = site.client.get("/queues")
    opened = site.client.get("/queues?name=a/b c", follow_redirects=False)

    assert page.text.count('data-testid="queue-row"') == 2
    assert opened.status_code == 303
    assert opened.headers["location"] == "/queues/a%2Fb%20c"
    assert site.client.get("/queues/a%2Fb%20c").status_code == 200
    assert [q["name"] for q in site.client.get("/api/queues").json()["queues"]] == [
        "later", "shop"]


def test_the_workers_page_lists_live_pools(sqlite_site: Site) -> None:
    consumer = sqlite_site.app.broker.consumer()
    require(consumer, Announcer, "presence").announce({
        "host": "box-1", "pool_pid": 100, "pid": 101, "in_flight": 2, "queues": ["shop"],
        "started_at": time.time() - 60})
    try:
        page = sqlite_site.client.get("/workers")
        data = sqlite_site.client.get("/api/workers").json()
    finally:
        consumer.close()

    assert page.text.count('data-testid="worker-row"') == 1
    assert 'data-host="box-1" data-pid="100"' in page.text
    assert data["problem"] is None
    assert data["pools"] == [{"host": "box-1", "pid": 100, "children": 1, "queues": ["shop"],
                              "in_flight": 2, "uptime_s": data["pools"][0]["uptime_s"]}]


def test_the_schedules_page_lists_the_code_and_the_store(store_url: str) -> None:
    site = Site(store_url)
    try:
        site.app.task(lambda: None, name="shop.tick", queue="shop", every=timedelta(minutes=5),
                      overlap="allow")
        table = ScheduleTable(open_store(store_url))
        table.register(schedule_specs(site.app))
        table.store.close()

        page = site.client.get("/schedules")
        data = site.client.get("/api/schedules").json()
    finally:
        site.close()

    assert page.text.count('data-testid="schedule-row"') == 1
    assert 'data-name="shop.tick" data-status="active"' in page.text
    assert data["problem"] is None
    (entry,) = data["schedules"]
    assert set(entry) == {"name", "schedule", "stored", "overlap", "status", "last_tick",
                          "next_tick", "missed", "last_job"}
    assert entry["schedule"] == "every 300s; queue=shop; overlap=allow"


def test_the_dashboard_can_be_mounted_in_another_asgi_app(sqlite_site: Site) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ops/tw", app=sqlite_site.web)])
    with TestClient(outer) as client:
        page = client.get("/ops/tw/jobs")
        login = client.get("/ops/tw/login")

    assert page.status_code == 200
    assert 'href="/ops/tw/jobs/' in page.text
    assert 'href="/ops/tw/static/dashboard.css"' in page.text
    assert "Path=/ops/tw" in login.headers["set-cookie"]


def test_pages_carry_a_strict_content_security_policy(sqlite_site: Site) -> None:
    headers = sqlite_site.client.get("/").headers

    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_the_static_files_come_from_the_package(sqlite_site: Site) -> None:
    css = sqlite_site.client.get("/static/dashboard.css")
    js = sqlite_site.client.get("/static/dashboard.js")

    assert css.headers["content-type"].startswith("text/css")
    assert "textContent" in js.text and "innerHTML" not in js.text
    assert sqlite_site.client.get("/static/../__init__.py").status_code == 404
    assert sqlite_site.client.get("/static/other.js").status_code == 404
