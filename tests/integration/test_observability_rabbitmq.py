"""The pool's /metrics aggregates every child; /healthz and `taskwarren health` ask the pool."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration import twtasks
from tests.support.rabbit import consumer_count
from tests.support.workers import ROOT, Ledger, Pool, wait_until

pytestmark = pytest.mark.rabbitmq
MODULE = "tests.integration.twtasks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def health(port: int) -> int:
    return subprocess.run([sys.executable, "-m", "taskwarren", "health", "--port", str(port)],
                          capture_output=True, cwd=ROOT, timeout=30).returncode


def test_metrics_count_tasks_of_every_child_and_health_asks_the_pool(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    port = free_port()
    assert health(port) == 1, "nothing answers before the pool starts"
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w.log",
                extra=["--metrics-port", str(port)])
    try:
        wait_until(lambda: consumer_count(queue) == 2, 30, what="two consumers")
        twtasks.work.options(queue=queue).send_many(
            [{"n": i, "ledger": str(ledger)} for i in range(40)])
        twtasks.work.options(queue=queue).send(99, str(ledger), mode="raise")
        wait_until(lambda: len(ledger.count("end")) == 40 and ledger.count("start")[99], 30,
                   what="41 tasks")
        name = "tests.integration.twtasks.work"
        ok = (f'taskwarren_tasks_total{{outcome="succeeded",queue="{queue}",task="{name}"}} '
              "40.0")
        dead = f'taskwarren_dead_lettered_total{{queue="{queue}",task="{name}"}} 1.0'
        wait_until(lambda: ok in scrape(port) and dead in scrape(port), 10,
                   what="the counters of both children summed")
        text = scrape(port)
        assert "taskwarren_task_duration_seconds_bucket" in text
        assert len(ledger.pids("end")) == 2, "both children ran tasks"
        assert health(port) == 0
        assert pool.stop() == 0
    finally:
        pool.kill()
