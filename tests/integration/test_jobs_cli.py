"""``taskwarren jobs list|show|cancel|retry`` on SQLite, PostgreSQL and MariaDB: what a
person sees and the exit codes, for jobs in every state the in-memory broker's ``join``
and ``project`` put them in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from taskwarren import Warren
from taskwarren.cli import main
from taskwarren.cli_jobs import printable
from taskwarren.relays import relay_for
from taskwarren.store import open_store
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import decode_events
from taskwarren.testing import join, project

ROOT = Path(__file__).resolve().parents[2]
#: What a hostile error (or task name) tries to do to a terminal: clear it.
CLEAR = "\x1b[2J"


class Shop:
    """An app with a job store, and tasks that succeed, fail for good, or fail with an
    error that tries to clear the terminal."""

    def __init__(self, store_url: str) -> None:
        self.app = Warren(url="memory://", store_url=store_url)
        self.store_url = store_url
        self.ran: list[int] = []

        def ship(order_id: int) -> None:
            self.ran.append(order_id)

        def explode(order_id: int) -> None:
            raise ValueError(f"{CLEAR}no such order {order_id}")

        self.ship = self.app.task(ship, name="shop.ship", queue="shop")
        self.explode = self.app.task(explode, name="shop.explode", queue="shop", retries=0)

    def jobs(self, *args: str) -> Result:
        """``taskwarren jobs ARGS --store-url <this store>``."""
        return CliRunner().invoke(main, ["jobs", *args, "--store-url", self.store_url])

    def relay(self) -> None:
        relay = relay_for(self.app)
        try:
            while relay.relay_once():
                pass
        finally:
            relay.store.close()


@pytest.fixture
def shop(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    for name in ("TASKWARREN_URL", "TASKWARREN_STORE_URL", "TASKWARREN_JOBS"):
        monkeypatch.delenv(name, raising=False)
    store = open_store(store_url)
    store.init()
    store.close()
    shop = Shop(store_url)
    yield shop
    shop.app.close()


def _listed(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def test_list_shows_each_job_with_its_state_and_json_has_every_field(shop: Shop) -> None:
    done = shop.ship.send(1)
    dead = shop.explode.send(2)
    join(shop.app, fail_on_error=False)
    waiting = shop.ship.send(3)
    project(shop.app)

    rows = _listed(shop.jobs("list", "--json"))
    table = shop.jobs("list")

    by_id = {r["id"]: r for r in rows}
    assert {i: by_id[i]["state"] for i in (done, dead, waiting)} == {
        done: "succeeded", dead: "dead", waiting: "queued"}
    assert rows[0]["id"] == waiting  # newest first
    for field in ("id", "task", "queue", "state", "attempt", "created_at", "started_at",
                  "finished_at", "error", "traceback", "worker", "args", "duration_s"):
        assert all(field in r for r in rows), field
    assert by_id[done]["task"] == "shop.ship" and by_id[done]["queue"] == "shop"
    assert by_id[done]["attempt"] == 0 and by_id[done]["error"] is None
    assert by_id[done]["finished_at"].endswith("+00:00")  # ISO-8601, UTC
    assert by_id[waiting]["started_at"] is None and by_id[waiting]["args"] == '{"order_id":3}'
    assert CLEAR in by_id[dead]["error"]  # JSON carries the text; json.dumps escapes ESC
    assert "\x1b" not in table.stdout and "\\x1b[2J" in table.stdout
    assert table.exit_code == 0, table.output
    assert len(table.stdout.splitlines()) == 4  # header and three jobs
    dead_line = next(line for line in table.stdout.splitlines() if line.startswith(dead))
    assert "dead" in dead_line and "ValueError" in dead_line


def test_list_filters_by_state_task_queue_since_and_limit(shop: Shop) -> None:
    first = shop.ship.send(1)
    dead = shop.explode.send(2)
    join(shop.app, fail_on_error=False)
    last = shop.ship.send(3)
    project(shop.app)

    assert [r["id"] for r in _listed(shop.jobs("list", "--state", "dead", "--json"))] == [dead]
    assert {r["id"] for r in _listed(shop.jobs("list", "--task", "shop.ship", "--json"))} == {
        first, last}
    assert _listed(shop.jobs("list", "--queue", "other", "--json")) == []
    assert len(_listed(shop.jobs("list", "--since", "1h", "--json"))) == 3
    assert [r["id"] for r in _listed(shop.jobs("list", "--limit", "1", "--json"))] == [last]


@pytest.mark.parametrize("args", [("--state", "lost"), ("--since", "yesterday"),
                                  ("--since", "0s"), ("--limit", "0"),
                                  ("--limit", "10001")])
def test_a_malformed_filter_is_a_usage_error_exit_2(shop: Shop, args: tuple[str, ...]) -> None:
    result = shop.jobs("list", *args)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and args[0] in result.output


def test_show_prints_arguments_timings_error_and_traceback(shop: Shop) -> None:
    dead = shop.explode.send(2)
    join(shop.app, fail_on_error=False)
    project(shop.app)

    shown = shop.jobs("show", dead)
    as_json = shop.jobs("show", dead, "--json")

    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.stdout
    for expected in ("state:         dead", "task:          shop.explode",
                     '{"order_id":2}', "ValueError: \\x1b[2Jno such order 2", "traceback:",
                     "worker:", "started:", "finished:"):
        assert expected in shown.stdout, expected
    job = json.loads(as_json.stdout)
    assert job["id"] == dead and job["state"] == "dead" and job["attempt"] == 0
    assert "ValueError" in job["traceback"] and job["worker"]


def test_show_of_an_unknown_id_exits_1(shop: Shop) -> None:
    result = shop.jobs("show", "no-such-job")

    assert result.exit_code == 1
    assert result.output == "Error: no job 'no-such-job' in the store\n"


def test_cancel_keeps_a_queued_job_from_running_and_is_too_late_for_a_finished_one(
        shop: Shop) -> None:
    queued = shop.ship.send(1)
    done = shop.ship.send(2)
    project(shop.app)

    cancelled = shop.jobs("cancel", queued)
    join(shop.app, queues=None)
    project(shop.app)
    late = shop.jobs("cancel", done)
    unknown = shop.jobs("cancel", "no-such-job")

    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout == f"{queued}: cancelled while queued: it will not run\n"
    assert shop.ran == [2]
    assert _listed(shop.jobs("list", "--state", "cancelled", "--json"))[0]["id"] == queued
    assert late.exit_code == 1 and "too late: it has already succeeded" in late.output
    assert unknown.exit_code == 1 and "no job 'no-such-job' in the store" in unknown.output


def test_cancel_of_a_job_still_in_the_outbox_removes_it(shop: Shop) -> None:
    job_id = shop.ship.options(unique_key="order-1").send(1)  # written to the outbox

    result = shop.jobs("cancel", job_id)
    shop.relay()
    join(shop.app)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{job_id}: removed from the outbox before it was sent\n"
    assert shop.ran == []


def test_cancel_of_a_running_job_says_it_is_too_late(shop: Shop) -> None:
    job_id = shop.ship.send(1)
    table = JobTable(open_store(shop.store_url))
    try:
        assert table.start(job_id, "shop.ship", "shop", 0, 0, "host:1", 0.0) == "run"
    finally:
        table.store.close()

    result = shop.jobs("cancel", job_id)

    assert result.exit_code == 1
    assert "too late: it is running (it may finish)" in result.output


def test_retry_runs_a_dead_job_again_and_refuses_any_other(shop: Shop) -> None:
    dead = shop.explode.send(2)
    done = shop.ship.send(1)
    join(shop.app, fail_on_error=False)
    project(shop.app)

    retried = shop.jobs("retry", dead)
    again = _listed(shop.jobs("list", "--state", "queued", "--json"))
    refused = shop.jobs("retry", done)
    unknown = shop.jobs("retry", "no-such-job")

    assert retried.exit_code == 0, retried.output
    assert retried.stdout.startswith(f"{dead}: queued again (attempt 0)")
    assert [(r["id"], r["attempt"], r["error"]) for r in again] == [(dead, 0, None)]
    shop.relay()  # the retry went through the outbox
    join(shop.app, fail_on_error=False)
    project(shop.app)
    assert _listed(shop.jobs("list", "--state", "dead", "--json"))[0]["id"] == dead
    assert refused.exit_code == 1
    assert "is succeeded: only a dead or cancelled job runs again" in refused.output
    assert unknown.exit_code == 1 and "no job 'no-such-job' in the store" in unknown.output


def test_a_hostile_task_name_from_a_message_is_escaped_in_the_table(shop: Shop) -> None:
    events = decode_events(json.dumps([{
        "task_id": "evil-1", "state": "dead", "at": 1.0e9, "task": f"{CLEAR}\x9b31mrm -rf",
        "queue": "q\x07", "error": "\x1b]0;owned\x07\u202egnp.exe", "args": "{}"}]).encode())
    table = JobTable(open_store(shop.store_url))
    try:
        table.apply(events)
    finally:
        table.store.close()

    listed = shop.jobs("list")
    shown = shop.jobs("show", "evil-1")

    for result in (listed, shown):
        assert result.exit_code == 0, result.output
        assert not any(ch in result.stdout for ch in "\x1b\x07\x9b\u202e"), result.stdout
    assert "\\x1b[2J\\x9b31mrm -rf" in listed.stdout
    assert "\\x1b]0;owned\\x07\\u202egnp.exe" in shown.stdout


def test_without_a_job_store_the_commands_say_so_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASKWARREN_URL", "TASKWARREN_STORE_URL", "TASKWARREN_JOBS"):
        monkeypatch.delenv(name, raising=False)

    result = CliRunner().invoke(main, ["jobs", "list"])

    assert result.exit_code == 1
    assert result.output == ("Error: no job store: set TASKWARREN_STORE_URL or give "
                             "--store-url (jobs are recorded only in a job store)\n")


def test_a_store_that_is_down_is_one_line_without_its_password() -> None:
    url = "postgresql://app:s3cr%40t@127.0.0.1:9/app"  # nothing listens on port 9

    result = CliRunner().invoke(main, ["jobs", "list", "--store-url", url])

    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot connect to the job store at ")
    assert len(result.output.splitlines()) == 1
    assert "s3cr" not in result.output and "Traceback" not in result.output


def test_a_store_without_the_jobs_table_says_to_run_store_init(tmp_path: Any) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")

    result = CliRunner().invoke(main, ["jobs", "list", "--store-url", f"sqlite:///{path}"])

    assert result.exit_code == 1
    assert "has no taskwarren_jobs table: run `taskwarren store init`" in result.output


def test_printable_shows_escapes_and_controls_and_cuts() -> None:
    assert printable("a\x1b[2Jb\tc\x00d") == "a\\x1b[2Jb c\\x00d"
    assert printable("one\ntwo", lines=True) == "one\ntwo"
    assert printable("x" * 50, 10) == "xxxxxxx..."


def test_a_worker_recording_jobs_in_a_store_without_the_jobs_table_stops_at_start(
        store_url: str) -> None:
    store = open_store(store_url)
    store.init()
    with store.cursor() as cur:  # a store made before taskwarren_jobs existed
        cur.execute("DROP TABLE taskwarren_jobs")
        store.conn.commit()
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKWARREN_")}
    env.update(TASKWARREN_STORE_URL=store_url, TASKWARREN_URL="memory://",
               PYTHONPATH=str(ROOT))

    done = subprocess.run([sys.executable, "-m", "taskwarren", "worker",
                           "tests.integration.twtasks", "-c", "1"], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 1, done.stderr
    assert "has no taskwarren_jobs table" in done.stderr
    assert "run `taskwarren store init`" in done.stderr and "Traceback" not in done.stderr
