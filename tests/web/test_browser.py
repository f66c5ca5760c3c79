"""The dashboard in a real Chromium: a real ``taskwarren web`` and a real ``taskwarren
worker`` over the embedded SQLite broker and a SQLite job store.

Debian's ``chromium`` driven by Playwright's Python package. Without either the tests
skip, but under ``CI`` they fail: CI can never pass by skipping. Each page's screenshot
is saved under ``TW_ARTIFACTS`` (default ``tests/artifacts/screenshots/``); with
``TW_README_SCREENSHOTS=1`` the README's are written to ``docs/screenshots/`` as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.store import open_store
from tests.support.workers import ROOT, Pool, free_port, wait_until
from tests.web.browsertasks import HOSTILE_QUEUE, QUEUE, SCRIPT, Shop, register

# The browser first: without one, skip (or fail) before starting the servers.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("browser")]

#: The dashboard's token (at least 16 characters).
TOKEN = "browser-test-token-0123456789"
#: An argument that would leave an attribute, were it not escaped.
IMG = '"><img src=x onerror=alert(1)>'
#: How long the browser waits for an element or a page (ms).
TIMEOUT_MS = 10_000
#: How long a job may take to reach the state a test waits for (s).
SETTLE_S = 30.0
#: The task module both subprocesses load.
MODULE = "tests.web.browsertasks"
#: The screenshots README shows, by the name the tests give them.
README_SHOTS = frozenset({"overview", "jobs-shop", "job-failed", "queue-dead-letters"})


def _unavailable(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing under CI")
    pytest.skip(f"{what} is missing")


def chromium_path() -> str:
    """The Chromium to drive: ``TW_CHROMIUM``, else the ``chromium`` on PATH."""
    found = os.environ.get("TW_CHROMIUM") or shutil.which("chromium")
    if not found:
        _unavailable("chromium (apt-get install chromium)")
    assert found is not None
    return found


@dataclass
class Stack:
    """A dashboard and a worker pool over one broker and one job store."""

    base: str
    app: Warren
    shop: Shop
    markers: Path
    #: The dead jobs the tests act on, by what they are for.
    dead: dict[str, str] = field(default_factory=dict)

    def state(self, task_id: str) -> str | None:
        """The job's state in the store (``None``: not there yet)."""
        job = self.app.jobs.get(task_id)
        return None if job is None else job.state


def _wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"taskwarren web did not answer: {log.read_text()}") \
                    from exc
            time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("browser")
    broker = f"sqlite:///{tmp / 'broker.db'}"
    store_url = f"sqlite:///{tmp / 'store.db'}"
    store = open_store(store_url)
    store.init()
    store.close()
    markers = tmp / "markers"
    markers.mkdir()
    env = {"TASKWARREN_STORE_URL": store_url, "TW_BROWSER_MARKERS": str(markers)}

    app = Warren(url=broker, store_url=store_url)
    shop = register(app)
    for order in (1001, 1002, 1003):  # these fail: their carrier is down
        (markers / f"order-{order}").touch()
    shop.send_receipt.send_many([{"order_id": n} for n in range(2001, 2009)])
    shop.ship_order.send_many([{"order_id": n} for n in range(3001, 3004)])
    made = Stack("", app, shop, markers, dead={
        "retry": shop.ship_order.send(1001),
        "replay": shop.ship_order.send(1002),
        "stays": shop.ship_order.send(1003),
        "hostile": shop.hostile.send(IMG),
    })

    pool = Pool(MODULE, [QUEUE, HOSTILE_QUEUE], broker, concurrency=1, env=env,
                log_path=tmp / "worker.log")
    try:
        port = free_port()
        web_log = tmp / "web.log"
        with web_log.open("wb") as out:
            web = subprocess.Popen(
                [sys.executable, "-m", "taskwarren", "web", MODULE, "--port", str(port)],
                env={**os.environ, **env, "PYTHONPATH": str(ROOT), "TASKWARREN_URL": broker,
                     "TASKWARREN_WEB_TOKEN": TOKEN},
                cwd=ROOT, stdout=out, stderr=out)
        try:
            made.base = f"http://127.0.0.1:{port}"
            _wait_for_http(made.base + "/healthz", web, web_log)
            wait_until(lambda: all(made.state(i) == "dead" for i in made.dead.values()),
                       timeout=SETTLE_S, what=f"the failing jobs to be dead ({tmp}/worker.log)")
            yield made
        finally:
            web.terminate()
            web.wait(10)
    finally:
        pool.stop()
        app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("playwright (pip install playwright)")
    with sync_playwright() as playwright:
        try:
            # --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root).
            launched = playwright.chromium.launch(executable_path=executable,
                                                  args=["--no-sandbox"])
        except Error as exc:
            _unavailable(f"a chromium that starts ({executable}: "
                         f"{exc.message.splitlines()[0]})")
        yield launched
        launched.close()


@dataclass
class Tab:
    """A browser page, and every JavaScript dialog that opened in it."""

    page: Any
    dialogs: list[str]


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    dialogs: list[str] = []

    def seen(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", seen)
    yield Tab(page, dialogs)
    context.close()
    assert dialogs == [], "a page opened a JavaScript dialog"


def artifacts() -> Path:
    found = Path(os.environ.get("TW_ARTIFACTS") or ROOT / "tests" / "artifacts" / "screenshots")
    found.mkdir(parents=True, exist_ok=True)
    return found


def shoot(page: Any, name: str, full_page: bool = False) -> None:
    """Save a screenshot of ``page`` as a test artifact (and for README, when asked)."""
    page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=full_page)
    if name in README_SHOTS and os.environ.get("TW_README_SCREENSHOTS"):
        readme = ROOT / "docs" / "screenshots"
        readme.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(readme / f"{name}.png"), full_page=full_page)


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def log_in(stack: Stack, page: Any, back: str) -> None:
    """Log in through the form, and come back to ``back``."""
    page.goto(f"{stack.base}/login?next={back}")
    page.get_by_test_id("login-token").fill(TOKEN)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(stack.base + back)
    expect(page.get_by_test_id("mode")).to_have_attribute("data-mode", "logged-in")


def reload_until(page: Any, done: Callable[[], bool], what: str) -> None:
    """Reload ``page`` until ``done()`` (what a user waiting for a job does)."""
    deadline = time.monotonic() + SETTLE_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)
        page.reload()


def test_every_page_loads_and_shows_its_main_table(stack: Stack, tab: Tab) -> None:
    page = tab.page
    pages = [("/", "job-counts", "overview"), ("/jobs", "jobs-table", "jobs"),
             (f"/jobs/{stack.dead['stays']}", "job-detail", "job"),
             (f"/queues/{QUEUE}", "dead-letters-table", "queue"),
             ("/workers", "workers-table", "workers"),
             ("/schedules", "schedules-table", "schedules"),
             ("/login", "login-form", "login")]
    for path, main, name in pages:
        answer = page.goto(stack.base + path)
        assert answer.status == 200, path
        expect(page.get_by_test_id(main)).to_be_visible()
        shoot(page, name)

    page.goto(stack.base + "/workers")
    expect(page.get_by_test_id("worker-row")).to_have_count(1)
    expect(page.get_by_test_id("worker-queues")).to_contain_text(QUEUE)
    page.goto(stack.base + "/schedules")
    expect(page.locator('[data-testid="schedule-row"][data-name="shop.sync_stock"]')) \
        .to_be_visible()
    page.goto(f"{stack.base}/jobs?queue={QUEUE}")
    expect(page.get_by_test_id("job-row").first).to_be_visible()
    shoot(page, "jobs-shop")


def test_the_overview_counters_refresh_without_a_reload(stack: Stack, tab: Tab) -> None:
    page = tab.page
    page.goto(stack.base + "/")
    total = page.get_by_test_id("count-total")
    expect(total).not_to_have_text("-")
    before = int(total.inner_text())
    page.evaluate("window.twSamePage = true")  # gone if the page were reloaded

    sent = stack.shop.send_receipt.send(2100)
    wait_until(lambda: stack.state(sent) is not None, timeout=SETTLE_S,
               what="the new job in the store")
    now = sum(stack.app.jobs.counts().values())

    assert now > before
    # The script polls every 5 s and the counts are served stale while they are read
    # again: the new count shows at the second poll, about 10 s on.
    expect(total).to_have_text(str(now), timeout=20_000)
    assert page.evaluate("window.twSamePage") is True
    shoot(page, "overview-refreshed")


def test_filtering_jobs_by_state_shows_only_dead_jobs(stack: Stack, tab: Tab) -> None:
    page = tab.page
    page.goto(stack.base + "/jobs")
    page.get_by_test_id("filter-state").select_option("dead")
    page.get_by_test_id("filter-submit").click()
    page.wait_for_url("**/jobs?state=dead*")

    rows = page.get_by_test_id("job-row")
    expect(rows.first).to_be_visible()
    states = rows.evaluate_all("rows => rows.map(r => r.dataset.state)")
    ids = rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    assert set(states) == {"dead"}
    assert {stack.dead["stays"], stack.dead["hostile"]} <= set(ids)
    assert not set(ids) & {j.id for j in stack.app.jobs.list(state="succeeded")}
    shoot(page, "jobs-dead")


def test_a_failed_job_shows_its_error_and_traceback(stack: Stack, tab: Tab) -> None:
    page = tab.page
    page.goto(stack.base + "/jobs?state=dead")
    page.locator(f'[data-job-id="{stack.dead["stays"]}"]').get_by_test_id("job-link").click()

    page.wait_for_url(f"**/jobs/{stack.dead['stays']}")
    expect(page.get_by_test_id("job-state")).to_have_text("dead")
    expect(page.get_by_test_id("job-task")).to_have_text("shop.ship_order")
    expect(page.get_by_test_id("job-error")).to_have_text(
        "RuntimeError: parcelway API answered 503 for order 1003")
    traceback = page.get_by_test_id("job-traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("in ship_order")
    expect(traceback).to_contain_text("RuntimeError: parcelway API answered 503 for order 1003")
    shoot(page, "job-failed", full_page=True)


def test_logging_in_and_retrying_a_dead_job_runs_it_to_success(stack: Stack,
                                                               tab: Tab) -> None:
    page = tab.page
    job_path = f"/jobs/{stack.dead['retry']}"
    page.goto(stack.base + job_path)
    expect(page.get_by_test_id("job-state")).to_have_text("dead")
    expect(page.get_by_test_id("retry-button")).to_have_count(0)  # not logged in
    page.get_by_test_id("login-hint").get_by_role("link").click()
    page.get_by_test_id("login-token").fill(TOKEN)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(stack.base + job_path)
    expect(page.get_by_test_id("mode")).to_have_attribute("data-mode", "logged-in")

    (stack.markers / "order-1001").unlink()  # the carrier is back
    page.get_by_test_id("retry-button").click()

    expect(page.get_by_test_id("action-result")).to_have_attribute("data-done", "true")
    page.get_by_test_id("action-back").click()
    state = page.get_by_test_id("job-state")
    reload_until(page, lambda: state.inner_text() == "succeeded", "the retried job")
    expect(page.get_by_test_id("job-attempt")).to_have_text("0")
    assert (stack.markers / "shipped-1001").exists()
    shoot(page, "job-retried")


def test_replaying_a_dead_letter_runs_it_and_the_dead_count_goes_down(stack: Stack,
                                                                      tab: Tab) -> None:
    page = tab.page
    queue_path = f"/queues/{QUEUE}"
    log_in(stack, page, queue_path)
    count = page.get_by_test_id("dead-count")
    before = int(count.get_attribute("data-count"))
    row = page.locator(f'[data-testid="dead-letter-row"][data-id="{stack.dead["replay"]}"]')
    expect(row.get_by_test_id("dead-error")).to_contain_text("answered 503 for order 1002")
    shoot(page, "queue-dead-letters")

    (stack.markers / "order-1002").unlink()
    row.get_by_test_id("replay-one").click()

    expect(page.get_by_test_id("action-message")).to_have_text("replayed 1")
    page.get_by_test_id("action-back").click()
    expect(row).to_have_count(0)
    expect(count).to_have_attribute("data-count", str(before - 1))
    shoot(page, "queue-replayed")
    page.goto(f"{stack.base}/jobs/{stack.dead['replay']}")
    state = page.get_by_test_id("job-state")
    reload_until(page, lambda: state.inner_text() == "succeeded", "the replayed job")
    assert (stack.markers / "shipped-1002").exists()


def test_a_hostile_task_name_and_error_render_as_text(stack: Stack, tab: Tab) -> None:
    page = tab.page
    hostile = stack.dead["hostile"]
    page.goto(f"{stack.base}/jobs?queue={HOSTILE_QUEUE}")
    expect(page.locator(f'[data-job-id="{hostile}"]').get_by_test_id("job-task")) \
        .to_have_text(SCRIPT)
    page.goto(f"{stack.base}/jobs/{hostile}")
    expect(page.get_by_test_id("job-task")).to_have_text(SCRIPT)
    expect(page.get_by_test_id("job-error")).to_have_text(f"ValueError: {SCRIPT}")
    expect(page.get_by_test_id("job-args")).to_contain_text("<img src=x onerror=alert(1)>")
    expect(page.get_by_test_id("job-traceback")).to_contain_text(f"ValueError: {SCRIPT}")
    assert_no_injected_markup(page)
    shoot(page, "job-hostile", full_page=True)

    page.goto(f"{stack.base}/queues/{HOSTILE_QUEUE}")
    expect(page.get_by_test_id("dead-task")).to_have_text(SCRIPT)
    expect(page.get_by_test_id("dead-error")).to_have_text(f"ValueError {SCRIPT}")
    assert_no_injected_markup(page)
    shoot(page, "queue-hostile")
    assert tab.dialogs == []


def assert_no_injected_markup(page: Any) -> None:
    """The page holds only its own script (dashboard.js) and no image at all."""
    scripts = page.evaluate("[...document.scripts].map(s => s.src || s.textContent)")
    assert [s.rsplit("/", 1)[-1] for s in scripts] == ["dashboard.js"]
    assert page.locator("img").count() == 0
