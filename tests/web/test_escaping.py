"""Everything that came from a message renders as text: task names, arguments, errors,
tracebacks, in every page that shows them."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from taskwarren import text as text_module
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import JobEvent
from taskwarren.web import context
from taskwarren.web.render import visible
from tests.web.conftest import IMG, SCRIPT, Site

ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_a_hostile_task_name_error_and_argument_render_escaped(site: Site) -> None:
    pages = {path: site.client.get(path).text for path in (
        "/jobs", f"/jobs/{site.evil}", "/queues/shop", "/jobs?state=dead",
        f"/jobs?task={SCRIPT}")}

    for path, text in pages.items():
        assert SCRIPT not in text, path
        assert "<img" not in text, path
        assert ESCAPED_SCRIPT in text, path
    detail = pages[f"/jobs/{site.evil}"]
    assert f"ValueError: {ESCAPED_SCRIPT}" in detail  # the error
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail  # the argument
    assert "onerror=alert(1)&gt;" in pages["/queues/shop"]  # the dead letter's arguments
    # The filter form echoes the task given, escaped inside its attribute.
    assert f'value="{ESCAPED_SCRIPT}"' in pages[f"/jobs?task={SCRIPT}"]


def test_a_hostile_queue_name_renders_escaped(sqlite_site: Site) -> None:
    text = sqlite_site.client.get(f"/queues/{IMG}").text

    assert "<img" not in text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in text


def test_control_characters_and_bidi_overrides_show_as_escapes(sqlite_site: Site) -> None:
    site = sqlite_site
    table = site.app.jobs.table()
    table.apply([JobEvent("evil-bidi", "dead", 1.0, task="shop.\u202eexe.txt",
                          queue="shop", created_at=1.0, error="\x1b[2Jcleared",
                          traceback="line one\nline\u200btwo")])

    text = site.client.get("/jobs/evil-bidi").text

    assert "\u202e" not in text and "\x1b" not in text and "\u200b" not in text
    assert "shop.\\u202eexe.txt" in text
    assert "\\x1b[2Jcleared" in text
    assert "line one\nline\\u200btwo" in text


def test_the_json_api_escapes_as_json_does_and_is_never_sniffed_as_html(site: Site) -> None:
    answer = site.client.get(f"/api/jobs/{site.evil}")

    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.json()["task"] == SCRIPT


def test_job_ids_with_slashes_and_spaces_have_working_links(sqlite_site: Site) -> None:
    table: JobTable = sqlite_site.app.jobs.table()
    table.apply([JobEvent("a/b c?d", "dead", 2.0, task="shop.ship", queue="shop",
                          created_at=2.0, error="boom")])

    listing = sqlite_site.client.get("/jobs").text
    detail = sqlite_site.client.get("/jobs/a%2Fb%20c%3Fd")

    assert 'href="/jobs/a%2Fb%20c%3Fd"' in listing
    assert detail.status_code == 200 and 'data-testid="job-id">a/b c?d<' in detail.text


def test_visible_cuts_a_long_text_before_escaping_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    chars = text_module._chars

    def counting(part: str, lines: bool) -> str:
        seen.append(len(part))
        return chars(part, lines)

    monkeypatch.setattr(text_module, "_chars", counting)
    shown = visible("\x00" * 1_000_000, 200)

    assert shown == ("\\x00" * 50)[:197] + "..." and len(shown) == 200
    assert max(seen) <= 201
    assert visible("ab\x1b[2Jcd", 6) == "ab\\..."
    assert visible("short", 200) == "short"


def test_every_page_is_rendered_on_the_dashboards_threads(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = context.render

    def recording(*args: Any, **kwargs: Any) -> str:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(context, "render", recording)
    for path in ("/", "/jobs", "/queues/shop", "/queues/shop/purge", "/login", "/nope/x",
                 f"/jobs/{sqlite_site.dead}", "/jobs/no-such-job"):
        sqlite_site.client.get(path)

    assert len(threads) >= 7
    assert all(name.startswith("taskwarren-web") for name in threads), threads
