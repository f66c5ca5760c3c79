"""A lifespan for ASGI applications (FastAPI, Starlette): the app's broker connection
opened at startup and closed at shutdown.

::

    warren = Warren()
    api = FastAPI(lifespan=lifespan(warren))

Startup connects and declares the queues of the app's tasks, so a broker that cannot
be reached fails the start, not the first request. ``.send()`` blocks until the broker
confirms: call it from ``def`` endpoints (run in a thread pool), not ``async def`` ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskwarren.app import Warren


@asynccontextmanager
async def connected(warren: Warren) -> AsyncIterator[Warren]:
    """Connect ``warren`` and declare its tasks' queues; close it on the way out.

    For an application with a lifespan of its own: ``async with connected(warren):``.
    """
    warren.declare(warren.queues())
    try:
        yield warren
    finally:
        warren.close()


def lifespan(warren: Warren) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A ``lifespan=`` for FastAPI or Starlette that keeps ``warren`` connected while the
    application serves (see :func:`connected`)."""

    @asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        async with connected(warren):
            yield

    return run
