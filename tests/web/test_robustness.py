"""A store or a management API that does not answer never freezes the dashboard: waits
are bounded, a failing management API is left alone for a while, the live counters wait
for each answer, and a page whose reads take too long is a 503."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from taskwarren.web import app as web_app
from taskwarren.web.data import STORE_WAIT_S
from tests.web.conftest import Site
from tests.web.test_management import amqp_app

JS = Path(__file__).parent.parent.parent / "taskwarren" / "web" / "static" / "dashboard.js"


def test_the_dashboards_store_connections_bound_their_waits(site: Site) -> None:
    table = site.web.state.web.dashboard.jobs.table()
    with table.store.cursor() as cur:
        if table.dialect == "postgresql":
            cur.execute("SHOW statement_timeout")
            statement = cur.fetchone()[0]
            cur.execute("SHOW lock_timeout")
            assert (statement, cur.fetchone()[0]) == (f"{STORE_WAIT_S}s", f"{STORE_WAIT_S}s")
        elif table.dialect == "mysql":
            cur.execute("SELECT @@SESSION.innodb_lock_wait_timeout")
            assert int(cur.fetchone()[0]) == STORE_WAIT_S
        else:  # SQLite waits its connect timeout, bounded by the same
            assert table.store.session_sql == ()


class Failing(BaseHTTPRequestHandler):
    """A management API that answers every request with a 500, counting them."""

    asked = 0

    def do_GET(self) -> None:
        type(self).asked += 1
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def failing_management() -> Iterator[str]:
    Failing.asked = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://ops:pw@127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_after_the_management_api_fails_it_is_not_asked_again_for_a_while(
        failing_management: str) -> None:
    dashboard = web_app(amqp_app(), management_url=failing_management,
                        queues=["a", "b", "c"], read_timeout_s=0.5, listen_s=0.1)
    with TestClient(dashboard) as client:
        first = client.get("/api/overview").json()
        second = client.get("/api/queues").json()
        page = client.get("/queues/a").text

    assert Failing.asked == 1
    notes = [q["note"] for q in first["queues"] + second["queues"]]
    assert len(notes) == 6 and all("the management API failed" in n for n in notes)
    assert "come from AMQP" in page


def test_a_page_whose_reads_take_too_long_is_a_503(
        sqlite_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site = sqlite_site
    site.web.state.web.timeout_s = 0.3
    release = threading.Event()

    def stuck(task_id: str) -> Any:
        release.wait(5)
        return None, None

    monkeypatch.setattr(site.web.state.web.dashboard, "job", stuck)
    try:
        started = time.monotonic()
        page = site.client.get(f"/jobs/{site.dead}")
        api = site.client.get(f"/api/jobs/{site.dead}")
        took = time.monotonic() - started
    finally:
        release.set()

    assert page.status_code == 503 and "did not answer within 0.3 s" in page.text
    assert api.status_code == 503 and "did not answer" in api.json()["error"]
    assert took < 2


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the script")
def test_the_live_counters_wait_for_each_answer_before_asking_again() -> None:
    driver = Path(__file__).parent / "js" / "poll.js"
    out = subprocess.run(["node", str(driver), str(JS)], capture_output=True, text=True,
                         timeout=30, check=True).stdout

    # 30 s without an answer: one request; the next only 5 s after the answer came.
    assert json.loads(out) == [1, 1, 2]
