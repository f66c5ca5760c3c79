"""Async tasks (and one plain one) for the async worker tests (issue 16).

The queue comes from ``TW_ASYNC_QUEUE`` so each test's pool consumes a queue of its
own. Every task writes ``event n pid unix-time`` lines to its ledger, one O_APPEND
write each.
"""

from __future__ import annotations

import asyncio
import os
import time

from taskwarren import Backoff, task
from tests.integration.twtasks import _mark

QUEUE = os.environ.get("TW_ASYNC_QUEUE", "twtest-async")


@task(queue=QUEUE)
async def naps(n: int, ledger: str, sleep_s: float) -> None:
    """Record a start, await ``sleep_s``, record the end."""
    _mark(ledger, "start", n)
    await asyncio.sleep(sleep_s)
    _mark(ledger, "end", n)


@task(queue=QUEUE)
def plain_naps(n: int, ledger: str, sleep_s: float) -> None:
    """The same in a plain function (an executor thread runs it)."""
    _mark(ledger, "start", n)
    time.sleep(sleep_s)
    _mark(ledger, "end", n)


@task(queue=QUEUE, retries=2, backoff=Backoff(base_s=0.2, max_s=0.2, min_s=0.2))
async def always_fails(n: int, ledger: str) -> None:
    """Fail after an await, every attempt."""
    _mark(ledger, "start", n)
    await asyncio.sleep(0.01)
    raise ValueError(f"async task {n} failed on purpose")


@task(queue=QUEUE, time_limit=1)
async def outlives_hard_limit(n: int, ledger: str, swallow: bool = False) -> None:
    """Await far past the hard limit; note the cancellation (and maybe swallow it)."""
    _mark(ledger, "start", n)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        _mark(ledger, "cancelled", n)
        if not swallow:
            raise
    await asyncio.sleep(60)  # swallowed: ignore the cancellation and go on
    _mark(ledger, "end", n)


@task(queue=QUEUE, time_limit=1)
async def blocks_loop(n: int, ledger: str, block_s: float) -> None:
    """Block the event loop (a synchronous sleep inside async def: a bug to survive)."""
    _mark(ledger, "start", n)
    time.sleep(block_s)
    _mark(ledger, "end", n)


@task(queue=QUEUE)
async def kills_its_child(n: int, ledger: str, wait_s: float = 0.05) -> None:
    """Kill the process running it, after an await (a crash in a C extension, say)."""
    _mark(ledger, "start", n)
    await asyncio.sleep(wait_s)
    os.kill(os.getpid(), 9)
