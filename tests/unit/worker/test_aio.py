"""Async tasks on the in-memory broker: the same outcomes and records as plain ones."""

from __future__ import annotations

import asyncio

import pytest

from taskwarren import Backoff, SoftTimeLimitExceeded, Warren
from taskwarren.message import H_ERROR_TYPE
from taskwarren.testing import join


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
