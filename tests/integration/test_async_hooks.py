"""The middleware hooks around ``async def`` tasks in a real worker pool (SQLite broker).

An async task past its hard limit is reported to ``after_process`` once: by the I/O
thread's settlement, never again when the cancelled coroutine ends (a metrics
middleware would count it twice, its in-flight gauge go below zero). An async task
runs in its message's trace, and what it sends continues it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from taskwarren import Warren
from tests.integration import twasynchooks
from tests.support.workers import Pool, wait_until


def test_an_async_task_past_its_hard_limit_is_reported_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    queue = f"twtest-asynchooks-{uuid.uuid4().hex[:8]}"
    ledger = tmp_path / "after_process.txt"
    app = Warren(url=url)
    outlives = app.task(queue=queue, name=twasynchooks.outlives.name,
                        time_limit=1)(twasynchooks.outlives.fn)
    task_id = outlives.send(1)
    app.close()
    workers = Pool("tests.integration.twasynchooks", [queue], url, concurrency=1,
                   extra=["--middleware", "tests.integration.twasynchooks:Recorder"],
                   env={"TW_ASYNC_QUEUE": queue, "TW_HOOKS_LEDGER": str(ledger)},
                   log_path=tmp_path / "pool.log")
    try:
        wait_until(lambda: ledger.exists() and task_id[:8] in ledger.read_text(), 30,
                   what="the hard limit's settlement")
        time.sleep(3)  # the cancelled coroutine ends within ABANDON_GRACE_S
        assert workers.stop() == 0
    finally:
        workers.kill()
    runs = [line for line in ledger.read_text().splitlines() if line.startswith(task_id)]
    assert len(runs) == 1, runs
    # Told by the settlement itself, with what became of the message.
    assert runs[0].split()[1:] == ["dead_lettered", "True"], runs


def test_an_async_task_runs_in_its_messages_trace_and_its_sends_continue_it(
        tmp_path: Path) -> None:
    import json

    from taskwarren.tracing import traceparent_scope

    url = f"sqlite:///{tmp_path / 'tw.db'}"
    queue = f"twtest-asynchooks-{uuid.uuid4().hex[:8]}"
    ledger = tmp_path / "trace.jsonl"
    app = Warren(url=url)
    traced = app.task(queue=queue, name=twasynchooks.traced.name)(twasynchooks.traced.fn)
    parent = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    with traceparent_scope(parent):
        task_id = traced.send(str(ledger))
    app.close()
    workers = Pool("tests.integration.twasynchooks", [queue], url, concurrency=1,
                   env={"TW_ASYNC_QUEUE": queue}, log_path=tmp_path / "pool.log")
    try:
        wait_until(lambda: ledger.exists() and ledger.read_text().count("child") == 2, 30,
                   what="both children")
        assert workers.stop() == 0
    finally:
        workers.kill()
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert lines[0] == {"trace": parent, "log_trace": "c" * 32, "task_id": task_id}
    assert [line["child"] for line in lines[1:]] == [parent, parent]
