"""Async tasks on the in-memory broker: the same outcomes and records as plain ones."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import pytest

from taskwarren import Backoff, Middleware, SoftTimeLimitExceeded, TaskRun, Warren
from taskwarren.message import H_ERROR_TYPE
from taskwarren.middleware.jobs import cancel_requested
from taskwarren.store import open_store
from taskwarren.testing import join, project
from taskwarren.worker.aio import room, run_async
from taskwarren.worker.execute import Executor
from taskwarren.worker.limits import Running


@pytest.fixture
def app() -> Warren:
    return Warren(url="memory://")


def test_an_async_task_is_awaited_and_acked_with_its_validated_arguments(app: Warren) -> None:
    seen: list[tuple[int, str]] = []

    @app.task(queue="aio")
    async def fetch(n: int, label: str = "x") -> None:
        await asyncio.sleep(0)
        seen.append((n, label))

    fetch.send("7", label="y")  # validated (and coerced) as a plain task's call is
    (result,) = join(app)
    assert result.outcome == "succeeded" and seen == [(7, "y")]
    assert app.broker.stats("aio").ready == 0


def test_a_failing_async_task_retries_then_dead_letters_with_its_error(app: Warren) -> None:
    attempts: list[int] = []

    @app.task(queue="aio", retries=2, backoff=Backoff(base_s=0.01, max_s=0.01, min_s=0.01))
    async def flaky(n: int) -> None:
        attempts.append(n)
        await asyncio.sleep(0)
        raise ValueError(f"async {n} failed")

    flaky.send(1)
    results = join(app, fail_on_error=False)
    assert [r.outcome for r in results] == ["retried", "retried", "dead_lettered"]
    assert attempts == [1, 1, 1]
    (dead,) = app.broker.dead_letters("aio")
    assert dead.headers[H_ERROR_TYPE] == "ValueError"


def test_an_async_task_past_its_soft_limit_is_cancelled_and_fails_with_the_soft_limit(
    app: Warren,
) -> None:
    cancelled: list[bool] = []

    @app.task(queue="aio", soft_time_limit=0.05)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    slow.send()
    (result,) = join(app, fail_on_error=False)
    assert cancelled == [True]
    assert result.outcome == "dead_lettered" and isinstance(result.error, SoftTimeLimitExceeded)
    assert result.duration_s < 5
    (dead,) = app.broker.dead_letters("aio")
    assert dead.headers[H_ERROR_TYPE] == "SoftTimeLimitExceeded"


def test_an_async_task_that_swallows_its_soft_limit_may_finish(app: Warren) -> None:
    @app.task(queue="aio", soft_time_limit=0.05)
    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0)
        return "done"

    stubborn.send()
    (result,) = join(app)
    assert result.outcome == "succeeded"


def test_system_exit_in_an_async_task_is_its_failure_not_the_loops(app: Warren) -> None:
    @app.task(queue="aio")
    async def leaves() -> None:
        await asyncio.sleep(0)
        raise SystemExit(3)

    leaves.send()
    (result,) = join(app, fail_on_error=False)
    assert result.outcome == "dead_lettered" and isinstance(result.error, SystemExit)
    (dead,) = app.broker.dead_letters("aio")
    assert dead.headers[H_ERROR_TYPE] == "SystemExit"


class Hooks(Middleware):
    """Records what the process hooks saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def before_process(self, run: TaskRun) -> None:
        self.seen.append(("before", run.task_name, run.outcome))

    def after_process(self, run: TaskRun) -> None:
        self.seen.append(("after", run.task_name, run.outcome))


def test_middleware_sees_an_async_run_and_its_outcome(app: Warren) -> None:
    hooks = Hooks()
    app.add_middleware(hooks)

    @app.task(queue="aio", name="fine")
    async def fine() -> None:
        await asyncio.sleep(0)

    @app.task(queue="aio", name="broken")
    async def broken() -> None:
        raise ValueError("no")

    fine.send()
    broken.send()
    join(app, fail_on_error=False)
    assert hooks.seen == [("before", "fine", ""), ("after", "fine", "succeeded"),
                          ("before", "broken", ""), ("after", "broken", "dead_lettered")]


def test_the_job_store_records_async_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url)
    store.init()
    store.close()
    app = Warren(url="memory://", store_url=url)
    seen: list[bool] = []

    @app.task(queue="aio", name="ok")
    async def ok() -> None:
        await asyncio.sleep(0)
        seen.append(cancel_requested())

    @app.task(queue="aio", name="bad")
    async def bad() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async and broken")

    try:
        good_id, bad_id = ok.send(), bad.send()
        join(app, fail_on_error=False)
        project(app)
        good, failed = app.jobs.get(good_id), app.jobs.get(bad_id)
        assert good is not None and good.state == "succeeded"
        assert failed is not None and failed.state == "dead"
        assert "async and broken" in (failed.error or "")
        assert seen == [False]
    finally:
        app.close()


def test_a_queue_with_async_tasks_counts_the_loops_slots_in_its_prefetch_floor(
    app: Warren,
) -> None:
    @app.task(queue="io")
    async def fetch() -> None: ...

    @app.task(queue="cpu")
    def crunch() -> None: ...

    # "routed" is no task's own queue: calls of either kind may be sent there.
    assert room(app.tasks.values(), ["io", "cpu", "routed"], 4, 100) == {
        "io": 104, "cpu": 4, "routed": 104}


@pytest.mark.parametrize("claimed", [True, False])
def test_a_run_the_worker_settled_past_its_hard_limit_is_not_reported_again_when_it_ends(
    app: Warren, claimed: bool
) -> None:
    told: list[str] = []

    class Recorder(Middleware):
        def after_process(self, run: TaskRun) -> None:
            told.append(run.outcome)

    app.add_middleware(Recorder())

    @app.task(queue="aio.void", time_limit=60)
    async def quick() -> None:
        await asyncio.sleep(0)

    quick.send()
    consumer = app.broker.consumer()
    consumer.consume("aio.void", 1)
    (delivery,) = consumer.poll(1.0)
    lock = threading.Lock()
    running = Running(delivery, -1)
    running.arm(quick)
    running.claimed = claimed  # what the I/O thread does at the hard limit, under the lock
    executor = Executor(app.tasks, app.settings.max_message_bytes, app.middleware)
    result = asyncio.run(run_async(executor, delivery, report=lambda: running.finish(lock)))

    assert result.outcome == "succeeded"  # the coroutine's own outcome, void if claimed
    assert told == ([] if claimed else ["succeeded"])
    # Once its own end reports it, the I/O thread may no longer claim it (nor wake up
    # for its hard limit).
    assert running.finished is not claimed
    assert running.next_deadline() == math.inf
    consumer.close()
