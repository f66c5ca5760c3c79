"""``async def`` tasks in a real worker pool, on RabbitMQ and on the embedded SQLite
broker (issue 16): they overlap, retry and dead-letter, are cancelled at their time
limit, come back after a kill -9, drain on SIGTERM, and share a child with plain tasks.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.brokers.capabilities import Admin, require
from taskwarren.message import H_ERROR, H_ERROR_TYPE, Envelope
from tests.integration import twasync
from tests.support.workers import Ledger, Pool, wait_until

MODULE = "tests.integration.twasync"


def sender(url: str, queue: str) -> tuple[Warren, dict[str, Any]]:
    """An app on ``url`` with the async module's tasks routed to ``queue``."""
    app = Warren(url=url)
    tasks = {name: app.task(queue=queue, name=getattr(twasync, name).name)(
        getattr(twasync, name).fn) for name in ("naps", "plain_naps", "always_fails",
                                               "outlives_hard_limit", "blocks_loop",
                                               "kills_its_child")}
    return app, tasks


def pool(url: str, queue: str, tmp_path: Path, extra: list[str] | None = None,
         env: dict[str, str] | None = None) -> Pool:
    return Pool(MODULE, [queue], url, concurrency=1, extra=extra,
                env={"TW_ASYNC_QUEUE": queue, **(env or {})},
                log_path=tmp_path / f"pool-{uuid.uuid4().hex}.log")


def dead(url: str, queue: str) -> list[Envelope]:
    app = Warren(url=url)
    try:
        return require(app.broker, Admin, "admin").dead_letters(queue)
    finally:
        app.close()


def ready(url: str, queue: str) -> int:
    """Messages left in ``queue`` (called once the pool has stopped: none are unacked)."""
    app = Warren(url=url)
    try:
        return require(app.broker, Admin, "admin").stats(queue).ready
    finally:
        app.close()


def high_water(ledger: Ledger, ns: range) -> int:
    """Most tasks of ``ns`` that were between their start and their end at one time."""
    edges = sorted([(ledger.times("start", n)[0], 1) for n in ns]
                   + [(ledger.times("end", n)[-1], -1) for n in ns])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def overlap_and_mix(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    """60 async naps of 0.5 s and 2 plain ones in one child: the async ones overlap."""
    app, tasks = sender(url, queue)
    try:
        tasks["naps"].send_many([{"n": n, "ledger": str(ledger), "sleep_s": 0.5}
                                 for n in range(60)])
        for n in (100, 101):
            tasks["plain_naps"].send(n, str(ledger), 0.3)
    finally:
        app.close()
    workers = pool(url, queue, tmp_path, ["--async-concurrency", "50"])
    try:
        wait_until(lambda: len(ledger.count("end")) == 62, 60, what="every task to end")
        assert workers.stop() == 0
    finally:
        workers.kill()
    assert len(ledger.pids("end")) == 1, "one child ran them all"
    peak = high_water(ledger, range(60))
    # One by one, 60 naps of 0.5 s take 30 s; 50 at once, about one second.
    assert peak >= 25, f"at most {peak} async tasks ran at once"
    assert peak <= 50, f"{peak} ran at once, past --async-concurrency 50"
    spread = max(ledger.times("end", n)[0] for n in range(60)) - min(
        ledger.times("start", n)[0] for n in range(60))
    assert spread < 10
    assert ledger.count("start")[100] == 1 and ledger.count("end")[101] == 1
    assert ready(url, queue) == 0


def retries_then_dead(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    app, tasks = sender(url, queue)
    try:
        task_id = tasks["always_fails"].send(1, str(ledger))
    finally:
        app.close()
    workers = pool(url, queue, tmp_path)
    try:
        wait_until(lambda: len(dead(url, queue)) == 1, 60, what="the dead letter")
        assert workers.stop() == 0
    finally:
        workers.kill()
    assert ledger.count("start")[1] == 3, "the first attempt and two retries"
    (letter,) = dead(url, queue)
    assert letter.message_id == task_id
    assert letter.headers[H_ERROR_TYPE] == "ValueError"
    assert "async task 1 failed on purpose" in str(letter.headers[H_ERROR])


def hard_limit_cancels(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    """One task honours the cancellation (the child lives on); one swallows it (the
    child is replaced): both are dead-lettered with the hard limit at once."""
    app, tasks = sender(url, queue)
    workers = pool(url, queue, tmp_path)
    try:
        tasks["outlives_hard_limit"].send(1, str(ledger))
        wait_until(lambda: ledger.count("start")[1] == 1, 30, what="the task to start")
        started = time.monotonic()
        (child,) = ledger.pids("start")
        wait_until(lambda: len(dead(url, queue)) == 1, 30, what="the first dead letter")
        assert time.monotonic() - started < 5, "settled at its 1 s hard limit, not later"
        wait_until(lambda: ledger.count("cancelled")[1] == 1, 10, what="the cancellation")
        tasks["naps"].send(2, str(ledger), 0.0)
        wait_until(lambda: ledger.count("end")[2] == 1, 20, what="a task after it")
        assert ledger.pids("end") == {child: 1}, "a cancelled task does not cost the child"

        tasks["outlives_hard_limit"].send(3, str(ledger), swallow=True)
        wait_until(lambda: len(dead(url, queue)) == 2, 30, what="the second dead letter")
        wait_until(lambda: ledger.count("cancelled")[3] == 1, 10, what="the cancellation")
        wait_until(lambda: not Path(f"/proc/{child}").exists(), 30,
                   what="the child that could not cancel the task to leave")
        tasks["naps"].send(4, str(ledger), 0.0)
        wait_until(lambda: ledger.count("end")[4] == 1, 30, what="a task in the new child")
        assert workers.stop() == 0
        assert set(ledger.pids("end")) - {child}, "the child that could not cancel was replaced"
    finally:
        app.close()
        workers.kill()
    assert ledger.count("end")[1] == 0 and ledger.count("end")[3] == 0
    for letter in dead(url, queue):
        assert letter.headers[H_ERROR_TYPE] == "TimeLimitExceeded"
    assert "task.cancel_ignored" in workers.log_text()


def kill_redelivers(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    app, tasks = sender(url, queue)
    try:
        tasks["naps"].send(1, str(ledger), 2.0)
    finally:
        app.close()
    workers = pool(url, queue, tmp_path)
    try:
        wait_until(lambda: ledger.count("start")[1] == 1, 30, what="the task to start")
        (victim,) = {pid for e, n, pid in ledger.events() if e == "start"}
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: ledger.count("end")[1] == 1, 60, what="the task to run again")
        assert workers.stop() == 0
    finally:
        workers.kill()
    assert ledger.count("start")[1] == 2
    (ender,) = ledger.pids("end")
    assert ender != victim
    assert ready(url, queue) == 0 and dead(url, queue) == []


def sigterm_drains(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    app, tasks = sender(url, queue)
    try:
        tasks["naps"].send_many([{"n": n, "ledger": str(ledger), "sleep_s": 1.5}
                                 for n in range(20)])
    finally:
        app.close()
    workers = pool(url, queue, tmp_path, ["--async-concurrency", "50"])
    try:
        wait_until(lambda: len(ledger.count("start")) == 20, 30, what="all 20 running")
        assert not ledger.count("end"), "none had ended when the stop came"
        assert workers.stop() == 0
    finally:
        workers.kill()
    assert ledger.count("end") == {n: 1 for n in range(20)}, "every running task finished"
    assert ready(url, queue) == 0 and dead(url, queue) == []


def blocked_loop(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    """A task blocking the loop: the I/O thread still settles it at its hard limit (it
    keeps turning, heartbeats with it), and the child is replaced."""
    app, tasks = sender(url, queue)
    workers = pool(url, queue, tmp_path)
    try:
        tasks["blocks_loop"].send(1, str(ledger), 8.0)
        wait_until(lambda: ledger.count("start")[1] == 1, 30, what="the task to start")
        started = time.monotonic()
        wait_until(lambda: len(dead(url, queue)) == 1, 30, what="the dead letter")
        assert time.monotonic() - started < 6, "settled while the loop was still blocked"
        assert ledger.count("end")[1] == 0
        tasks["naps"].send(2, str(ledger), 0.0)
        wait_until(lambda: ledger.count("end")[2] == 1, 40, what="a task after it")
        assert workers.stop() == 0
    finally:
        app.close()
        workers.kill()
    (letter,) = dead(url, queue)
    assert letter.headers[H_ERROR_TYPE] == "TimeLimitExceeded"
    blocked = {pid for e, n, pid in ledger.events() if e == "start" and n == 1}
    after = {pid for e, n, pid in ledger.events() if e == "end" and n == 2}
    assert after and not after & blocked, "the blocked child was replaced"


def poison_parked(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    """An async task that kills its process each time is dead-lettered as poison."""
    app, tasks = sender(url, queue)
    try:
        task_id = tasks["kills_its_child"].send(1, str(ledger))
        tasks["naps"].send(2, str(ledger), 0.0)
    finally:
        app.close()
    workers = pool(url, queue, tmp_path, env={"TASKWARREN_POISON_KILLS": "2"})
    try:
        wait_until(lambda: len(dead(url, queue)) == 1, 60, what="the poison parked")
        try:
            wait_until(lambda: ledger.count("end")[2] == 1, 30, what="the innocent task")
        except AssertionError as exc:  # seen once in CI, under load: say what was left
            raise AssertionError(f"{exc}; ledger {ledger.events()}; ready {ready(url, queue)}"
                                 f"; pool log:\n{workers.log_text()[-6000:]}") from None
        assert workers.stop() == 0
    finally:
        workers.kill()
    assert ledger.count("start")[1] == 2, "run once per kill allowed, then parked unrun"
    (letter,) = dead(url, queue)
    assert letter.message_id == task_id and letter.headers[H_ERROR_TYPE] == "PoisonMessage"


def killer_beside_others(url: str, queue: str, ledger: Ledger, tmp_path: Path) -> None:
    """Killed beside other async tasks, nobody is charged; each then runs alone, where
    the killer's deaths count and it is parked; the innocent ones end."""
    app, tasks = sender(url, queue)
    try:
        tasks["naps"].send_many([{"n": n, "ledger": str(ledger), "sleep_s": 1.0}
                                 for n in range(3)])
        killer = tasks["kills_its_child"].send(9, str(ledger), wait_s=0.5)
    finally:
        app.close()
    workers = pool(url, queue, tmp_path, env={"TASKWARREN_POISON_KILLS": "2"})
    try:
        wait_until(lambda: len(dead(url, queue)) == 1, 90, what="the killer parked")
        wait_until(lambda: all(ledger.count("end")[n] >= 1 for n in range(3)), 30,
                   what="the innocent tasks to end")
        assert workers.stop() == 0
    finally:
        workers.kill()
    (letter,) = dead(url, queue)
    assert letter.message_id == killer and letter.headers[H_ERROR_TYPE] == "PoisonMessage"
    assert ledger.count("start")[9] == 3, "one death beside the others, two alone"
    assert "worker.child_died_unattributed" in workers.log_text()


SCENARIOS: dict[str, Callable[[str, str, Ledger, Path], None]] = {
    "overlap": overlap_and_mix, "retries": retries_then_dead, "hard_limit": hard_limit_cancels,
    "kill": kill_redelivers, "sigterm": sigterm_drains, "blocked": blocked_loop,
    "poison": poison_parked, "suspects": killer_beside_others}


@pytest.mark.rabbitmq
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_async_tasks_in_a_pool_on_rabbitmq(scenario: str, queue: str, rabbit_url: str,
                                           ledger: Ledger, tmp_path: Path) -> None:
    SCENARIOS[scenario](rabbit_url, queue, ledger, tmp_path)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_async_tasks_in_a_pool_on_sqlite(scenario: str, ledger: Ledger, tmp_path: Path) -> None:
    queue = f"twtest-async-{uuid.uuid4().hex[:8]}"
    SCENARIOS[scenario](f"sqlite:///{tmp_path / 'tw.db'}", queue, ledger, tmp_path)
