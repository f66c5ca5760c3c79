"""Review (s-review): in_memory and async tasks, and in_memory under an ASGI lifespan.

FAIL on cea5023.
"""

from __future__ import annotations

import asyncio

import pytest

from taskwarren import Warren
from taskwarren.testing import in_memory

# Port 1: nothing listens; a send that escapes memory fails instead of reaching a broker.
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"


def test_sends_stay_in_memory_after_the_asgi_lifespan_closed_the_app() -> None:
    app = Warren(UNREACHABLE)

    @app.task(queue="review.lifespan")
    def welcome(x: int) -> None:
        pass

    with in_memory(app) as queues:
        app.close()  # what taskwarren.contrib.asgi.connected does when a TestClient exits
        welcome.send(1)  # a later request, or the test's own send
        assert queues.waiting("review.lifespan") == 1
        assert [r.outcome for r in queues.run()] == ["succeeded"]


def test_async_tasks_share_one_event_loop_across_messages_as_in_a_worker() -> None:
    # A worker child awaits every async task on one loop; clients made on first use
    # (httpx.AsyncClient, asyncpg pools) are bound to it.
    app = Warren("memory://")
    loops: list[asyncio.AbstractEventLoop] = []

    @app.task(queue="review.loops")
    async def fetch(x: int) -> None:
        loops.append(asyncio.get_running_loop())

    with in_memory(app) as queues:
        fetch.send(1)
        fetch.send(2)
        queues.run()
    assert len(loops) == 2 and loops[0] is loops[1]


def test_run_works_from_an_async_test() -> None:
    app = Warren("memory://")

    @app.task(queue="review.inloop")
    async def fetch(x: int) -> None:
        pass

    async def an_async_test() -> list[str]:
        with in_memory(app) as queues:
            fetch.send(1)
            return [r.outcome for r in queues.run()]

    assert asyncio.run(an_async_test()) == ["succeeded"]


if __name__ == "__main__":
    pytest.main([__file__])
