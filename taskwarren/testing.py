"""Helpers for testing code that uses taskwarren, on the in-memory broker.

::

    app = Warren(url="memory://")
    ...
    my_task.send(1)
    join(app)            # runs everything queued; re-raises the first task failure
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from taskwarren.app import Warren
from taskwarren.brokers.base import Republish, settlement
from taskwarren.brokers.memory import MemoryBroker
from taskwarren.errors import ConfigurationError
from taskwarren.worker.aio import run_async, wants_loop
from taskwarren.worker.execute import Executor, Result


def join(
    app: Warren,
    queues: Sequence[str] | None = None,
    *,
    timeout_s: float = 10.0,
    fail_on_error: bool = True,
    run_delayed: bool = True,
) -> list[Result]:
    """Run queued tasks in this thread until the queues are empty; return the results.

    Args:
        app: an app on the in-memory broker.
        queues: queues to run (default: every queue of the app's tasks).
        timeout_s: give up (``TimeoutError``) if work remains after this long.
        fail_on_error: re-raise the first exception a task raised (after settling it
            as a worker would: retried or dead-lettered).
        run_delayed: also wait for delayed messages (retries, ``delay=``) to come due.

    Raises:
        ConfigurationError: the app is not on the in-memory broker.
        TimeoutError: work remained after ``timeout_s``.
    """
    broker = app.broker
    if not isinstance(broker, MemoryBroker):
        raise ConfigurationError("join() runs on the in-memory broker (url='memory://')")
    names = list(queues) if queues is not None else app.queues()
    app.declare(names)
    app.bind_subscriptions(names)  # as a worker does when it starts
    executor = Executor(app.tasks, app.settings.max_message_bytes, app.middleware)
    consumer = broker.consumer()
    for name in names:
        consumer.consume(name, 100)
    results: list[Result] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            deliveries = consumer.poll(0.0)
            if not deliveries:
                waiting = any(
                    (s.delayed or 0) > 0 for s in (broker.stats(q) for q in names))
                if not (run_delayed and waiting):
                    return results
                if time.monotonic() > deadline:
                    raise TimeoutError(f"delayed work remains after {timeout_s}s")
                deliveries = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            for delivery in deliveries:
                if wants_loop(executor, delivery):  # an async def task: awaited here
                    result = asyncio.run(run_async(executor, delivery))
                else:
                    result = executor.run(delivery)
                consumer.settle(delivery, result.action)
                results.append(result)
                if fail_on_error and result.error is not None:
                    action = settlement(result.action)
                    retrying = isinstance(action, Republish) and not action.dead
                    if not retrying or not run_delayed:
                        raise result.error
    finally:
        consumer.close()


def project(app: Warren) -> int:
    """Apply the job events waiting on the in-memory broker to ``app``'s job store, as the
    worker's projector would; returns how many were applied."""
    from taskwarren.store.database import open_store
    from taskwarren.store.job_table import JobTable
    from taskwarren.store.projector import Projector

    url = app.settings.effective_store_url
    if url is None:
        raise ConfigurationError("project() needs a job store (store_url=...)")
    projector = Projector(app.broker, lambda: JobTable(open_store(url)), 0,
                          app.settings.jobs_events_queue)
    return projector.drain()
