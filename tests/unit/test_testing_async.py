"""The testing helpers with ``async def`` tasks: awaited on one event loop per run, as
in a worker child, and runnable from an async test, whose own loop is running."""

from __future__ import annotations

import asyncio
import contextvars

from taskwarren import Warren
from taskwarren.testing import in_memory


def test_async_tasks_share_one_event_loop_across_messages_as_in_a_worker() -> None:
    # A worker child awaits every async task on one loop; clients made on first use
    # (httpx.AsyncClient, asyncpg pools) are bound to it.
    app = Warren("memory://")
    loops: list[asyncio.AbstractEventLoop] = []

    @app.task(queue="tta.loops")
    async def fetch(x: int) -> None:
        loops.append(asyncio.get_running_loop())

    with in_memory(app) as queues:
        fetch.send(1)
        fetch.send(2)
        queues.run()
    assert len(loops) == 2 and loops[0] is loops[1]


def test_run_works_from_an_async_test() -> None:
    app = Warren("memory://")

    @app.task(queue="tta.inloop")
    async def fetch(x: int) -> None:
        pass

    async def an_async_test() -> list[str]:
        with in_memory(app) as queues:
            fetch.send(1)
            return [r.outcome for r in queues.run()]

    assert asyncio.run(an_async_test()) == ["succeeded"]


def test_each_async_task_runs_in_a_context_of_its_own_as_in_a_worker() -> None:
    app = Warren("memory://")
    marked: contextvars.ContextVar[int | None] = contextvars.ContextVar("marked", default=None)
    seen: list[int | None] = []

    @app.task(queue="tta.context")
    async def mark(x: int) -> None:
        seen.append(marked.get())
        marked.set(x)

    with in_memory(app) as queues:
        mark.send(1)
        mark.send(2)
        queues.run()
    assert seen == [None, None]
