"""The pool's /metrics aggregates every child; /healthz and `taskwarren health` ask the pool."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration import twtasks
from tests.support.rabbit import consumer_count
from tests.support.workers import ROOT, Ledger, Pool, free_port, scrape, wait_until

pytestmark = pytest.mark.rabbitmq
MODULE = "tests.integration.twtasks"


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
              "40.0")  # counted before the relay below adds its own
        dead = f'taskwarren_dead_lettered_total{{queue="{queue}",task="{name}"}} 1.0'
        wait_until(lambda: ok in scrape(port) and dead in scrape(port), 10,
                   what="the counters of both children summed")
        twtasks.relay.options(queue=queue).send(500, str(ledger), queue)
        wait_until(lambda: ledger.count("end")[500] == 1, 30, what="the relayed task")
        confirm = f'taskwarren_publish_confirm_seconds_count{{queue="{queue}"}} 1.0'
        wait_until(lambda: confirm in scrape(port), 10, what="the relay's confirm timed")
        text = scrape(port)
        assert "taskwarren_task_duration_seconds_bucket" in text
        assert len(ledger.pids("end")) == 2, "both children ran tasks"
        assert health(port) == 0
        assert pool.stop() == 0
    finally:
        pool.kill()


def test_every_task_event_is_one_json_line_with_the_task_context(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    import json

    log_file = open(tmp_path / "debug.log", "wb")  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if k != "TASKWARREN_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskwarren", "--log-format", "json", "--log-level", "DEBUG",
         "worker", MODULE, "-c", "1", "-Q", queue, "--url", rabbit_url],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stderr=log_file,
        start_new_session=True)
    try:
        ok_id = twtasks.work.options(queue=queue).send(1, str(ledger))
        bad_id = twtasks.work.options(queue=queue).send(2, str(ledger), mode="raise")
        wait_until(lambda: ledger.count("start")[2] == 1 and ledger.count("end")[1] == 1, 30,
                   what="both tasks")
        wait_until(lambda: "task.dead_lettered" in (tmp_path / "debug.log").read_text(), 10,
                   what="the failure logged")
    finally:
        proc.terminate()
        proc.wait(30)
        log_file.close()
    events = [json.loads(line) for line in (tmp_path / "debug.log").read_text().splitlines()
              if line.startswith("{")]
    mine = [e for e in events if e.get("task_id") in (ok_id, bad_id)]
    by_event = {(e["event"], e["task_id"]): e for e in mine}
    for name in ("task.received", "task.started", "task.succeeded"):
        e = by_event[(name, ok_id)]
        assert e["queue"] == queue and e["attempt"] == 0 and e["worker_pid"] > 0
    assert by_event[("task.succeeded", ok_id)]["duration_s"] >= 0
    failed = by_event[("task.dead_lettered", bad_id)]
    assert failed["error_type"] == "ValueError" and failed["task"].endswith("twtasks.work")
    assert all("guest:guest" not in line for line in (tmp_path / "debug.log").read_text()
               .splitlines()), "the broker password is never logged"


def test_queues_json_reports_what_was_sent(queue: str, ledger: Ledger, rabbit_url: str) -> None:
    import json

    twtasks.work.options(queue=queue).send_many(
        [{"n": i, "ledger": str(ledger)} for i in range(7)])
    out = subprocess.run([sys.executable, "-m", "taskwarren", "queues", queue, "--json",
                          "--url", rabbit_url], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, check=True).stdout
    (row,) = json.loads(out)
    assert row["queue"] == queue and row["ready"] == 7 and row["dead"] == 0


def pools_seen(url: str, queue: str) -> list[dict[str, object]]:
    import json

    out = subprocess.run([sys.executable, "-m", "taskwarren", "workers", "--json",
                          "--listen", "2", "--url", url], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout
    return [p for p in json.loads(out) if queue in p["queues"]]  # type: ignore[operator]


@pytest.mark.parametrize("broker", ["rabbitmq", "sqlite"])
def test_workers_finds_two_running_pools_and_loses_one_soon_after_it_stops(
    broker: str, queue: str, rabbit_url: str, tmp_path: Path
) -> None:
    url = rabbit_url if broker == "rabbitmq" else f"sqlite:///{tmp_path / 'tw.db'}"
    first = Pool(MODULE, [queue], url, concurrency=2, log_path=tmp_path / "a.log")
    second = Pool(MODULE, [queue], url, concurrency=1, log_path=tmp_path / "b.log")
    try:
        wait_until(lambda: len(pools_seen(url, queue)) == 2, 30, interval=0.5,
                   what="two pools announced")
        by_pid = {p["pid"]: p for p in pools_seen(url, queue)}
        assert by_pid[first.pid]["children"] == 2 and by_pid[second.pid]["children"] == 1
        assert second.stop() == 0
        stopped = time.monotonic()
        wait_until(lambda: [p["pid"] for p in pools_seen(url, queue)] == [first.pid], 15,
                   interval=0.2, what="the stopped pool gone")
        assert time.monotonic() - stopped < 15
        assert first.stop() == 0
    finally:
        first.kill()
        second.kill()


def test_send_file_queues_every_line_and_prints_their_ids(
    queue: str, rabbit_url: str, tmp_path: Path
) -> None:
    import json

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"n": i, "ledger": "/dev/null"}) + "\n"
                            for i in range(2500)))
    # A module of the test's own, so the task's queue is the test's queue.
    (tmp_path / "routed.py").write_text(
        "from taskwarren import task\n"
        f"@task(queue={queue!r}, name='routed.work')\n"
        "def work(n: int, ledger: str) -> None: ...\n")
    out = subprocess.run([sys.executable, "-m", "taskwarren", "send", "routed.work", "-m",
                          "routed", "--file", str(jobs), "--url", rabbit_url],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(set(ids)) == 2500
    from tests.support.rabbit import queue_counts

    assert queue_counts(queue)[0] == 2500
