"""Keyset pagination of ``/jobs``: newest first by (created_at, task id), with no gaps and
no duplicates across pages, ties on created_at included, filters kept."""

from __future__ import annotations

import re
from html import unescape

from taskwarren.store.jobs import STATES, JobEvent
from tests.web.conftest import Site

#: Jobs added by the test, on 13 distinct times: every page boundary falls inside a tie.
N = 130


def add_jobs(site: Site) -> list[tuple[float, str, str]]:
    """Add :data:`N` jobs; their (created_at, id, state), newest first."""
    events = []
    for i in range(N):
        created = 1_000_000.0 + (i % 13) * 0.25
        state = ("queued", "dead", "succeeded")[i % 3]
        events.append(JobEvent(f"job-{i:04d}", state, created + 1, task=f"t{i % 2}",
                               queue="q", created_at=created))
    site.app.jobs.table().apply(events)
    return sorted(((e.created_at or 0.0, e.task_id, e.state) for e in events), reverse=True)


def test_api_pages_cover_every_job_once_in_order(site: Site) -> None:
    expected = add_jobs(site)
    seen: list[str] = []
    cursor = None
    while True:
        query = "queue=q&limit=7" + (f"&before={cursor}" if cursor else "")
        page = site.client.get(f"/api/jobs?{query}").json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [job_id for _, job_id, _ in expected]


def test_html_pages_follow_next_links_and_keep_the_filters(site: Site) -> None:
    expected = [job_id for _, job_id, state in add_jobs(site) if state == "dead"]
    seen: list[str] = []
    url = "/jobs?queue=q&state=dead&limit=6"
    pages = 0
    while url:
        text = site.client.get(url).text
        seen += re.findall(r'data-testid="job-row" data-job-id="([^"]+)"', text)
        found = re.search(r'href="([^"]+)" id="next-page"', text)
        url = unescape(found.group(1)) if found else ""
        if url:
            assert "state=dead" in url and "queue=q" in url and "limit=6" in url
            assert 'data-testid="first-page"' in site.client.get(url).text
        pages += 1
    assert seen == expected
    assert pages == -(-len(expected) // 6)


def test_a_page_with_no_more_jobs_has_no_next_link(site: Site) -> None:
    text = site.client.get("/jobs?limit=200").text

    assert 'id="next-page"' not in text
    assert 'id="first-page"' not in text


def test_the_keyset_cursor_is_the_same_in_app_jobs_list(site: Site) -> None:
    expected = add_jobs(site)
    first = site.app.jobs.list(queue="q", limit=10)
    last = first[-1]
    second = site.app.jobs.list(queue="q", before=(last.created_at, last.id), limit=10)

    assert [j.id for j in first + second] == [job_id for _, job_id, _ in expected[:20]]
    assert {j.state for j in first} <= set(STATES)
