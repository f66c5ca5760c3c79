"""A user's middleware, registered with ``--middleware``, in a real worker pool (issue 11).

On RabbitMQ and on the embedded SQLite broker: it sees every hook, the failing task's
exception included, ``after_*`` hooks in reverse order, and a middleware that raises
in every hook loses no message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskwarren import Warren
from tests.integration import twtasks
from tests.integration.twmiddleware import Exploding, First, Second
from tests.support.workers import ROOT, Ledger, Pool, wait_until

MODULE = "tests.integration.twtasks"
MIDDLEWARE = ["--middleware", "tests.integration.twmiddleware:First",
              "--middleware", "tests.integration.twmiddleware:Exploding",
              "--middleware", "tests.integration.twmiddleware:Second"]


def hooks(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def dead_count(queue: str, url: str) -> int:
    out = subprocess.run([sys.executable, "-m", "taskwarren", "queues", queue, "--json",
                          "--url", url], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=True).stdout
    return int(json.loads(out)[0]["dead"])


def run_pool_with_middleware(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    """Send one good and one failing call through a sender with the same middleware, run
    them in a pool started with ``--middleware``, and check what the hooks recorded."""
    path = tmp_path / "hooks.jsonl"
    sender = Warren(url=url, middleware=[First(str(path)), Exploding(), Second(str(path))])
    work = sender.task(queue=queue, name=twtasks.work.name)(twtasks.work.fn)
    try:
        ok_id = work.send(1, str(ledger))
        bad_id = work.send(2, str(ledger), mode="raise")
    finally:
        sender.close()
    pool = Pool(MODULE, [queue], url, concurrency=2, extra=MIDDLEWARE,
                env={"TW_HOOKS_FILE": str(path)}, log_path=tmp_path / "pool.log")
    try:
        wait_until(lambda: sum(h["hook"] == "after_process" and h["task_id"] == bad_id
                               for h in hooks(path)) == 2, 60, what="the failure's hooks")
        wait_until(lambda: ledger.count("end")[1] == 1, 30, what="the good task")
        assert pool.stop() == 0
    finally:
        pool.kill()

    seen = hooks(path)
    mine = [(h["mw"], h["hook"]) for h in seen if h.get("task_id") == ok_id]
    assert mine == [("First", "before_enqueue"), ("Second", "before_enqueue"),
                    ("Second", "after_enqueue"), ("First", "after_enqueue"),
                    ("First", "before_process"), ("Second", "before_process"),
                    ("Second", "after_process"), ("First", "after_process")]
    worker_side = [h for h in seen if h.get("task_id") == ok_id and "process" in h["hook"]]
    assert {h["pid"] for h in worker_side} != {seen[0]["pid"]}, "run in a worker child"
    for h in worker_side:
        assert (h["task_name"], h["attempt"], h["queue"]) == (twtasks.work.name, 0, queue)
    assert worker_side[-1]["outcome"] == "succeeded" and worker_side[-1]["exception"] is None
    failed = [h for h in seen if h.get("task_id") == bad_id and h["hook"] == "after_process"]
    assert [h["mw"] for h in failed] == ["Second", "First"]
    for h in failed:
        assert h["outcome"] == "dead_lettered" and h["exception_type"] == "ValueError"
        assert h["exception"] == "task 2 failed on purpose" and h["duration_s"] >= 0
    started = sorted((h["mw"], h["index"]) for h in seen if h["hook"] == "child_started")
    assert started == [("First", 0), ("First", 1), ("Second", 0), ("Second", 1)]
    assert "middleware.failed" in pool.log_text(), "the exploding middleware was logged"
    assert dead_count(queue, url) == 1, "the failure is kept as a dead letter"


@pytest.mark.rabbitmq
def test_a_pools_middleware_sees_every_hook_and_a_raising_one_loses_nothing_on_rabbitmq(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    run_pool_with_middleware(rabbit_url, queue, ledger, tmp_path)


def test_a_pools_middleware_sees_every_hook_and_a_raising_one_loses_nothing_on_sqlite(
    ledger: Ledger, tmp_path: Path
) -> None:
    queue = f"twtest-mw-{uuid.uuid4().hex[:8]}"
    run_pool_with_middleware(f"sqlite:///{tmp_path / 'tw.db'}", queue, ledger, tmp_path)
