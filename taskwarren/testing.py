"""Helpers for testing code that uses taskwarren, on the in-memory broker.

::

    with in_memory(app) as queues:   # the app's tasks now send to memory
        my_task.send(1)
        queues.run()                 # runs it as a worker would; re-raises its failure

``join(app)`` does the same for an app built on ``memory://``, waiting for delayed
work in real time. The pytest plugin (:mod:`taskwarren.pytest_plugin`) wraps
:func:`in_memory` as the ``taskwarren_memory`` fixture.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from taskwarren.app import Warren, default_app
from taskwarren.brokers.base import Republish, settlement
from taskwarren.brokers.memory import MemoryBroker
from taskwarren.errors import ConfigurationError
from taskwarren.message import Envelope
from taskwarren.worker.aio import run_async, wants_loop
from taskwarren.worker.execute import Executor, Result

#: Outcomes of a message that ended without succeeding (its failure is re-raised).
FAILED = ("dead_lettered", "rejected")


class InMemory:
    """An app switched to an in-memory broker by :func:`in_memory`.

    Attributes:
        app: the app (its tasks send here while the switch lasts).
        broker: the in-memory broker holding what they sent.
    """

    def __init__(self, app: Warren, broker: MemoryBroker) -> None:
        self.app = app
        self.broker = broker

    def run(self, queues: Sequence[str] | None = None, *, raise_errors: bool = True,
            max_messages: int = 10_000) -> list[Result]:
        """Run what was sent, as a worker would, until nothing is left; the results.

        Each message goes through the worker's executor and the app's middleware:
        arguments decoded from JSON, retries republished, failures dead-lettered.
        Delayed messages (``delay=``, a retry's backoff) run at once: the clock is
        skipped, not waited for. Messages the tasks send meanwhile run too.

        Args:
            queues: queues to run (default: every queue of the app's tasks).
            raise_errors: once all is run, re-raise the exception of the first message
                that was dead-lettered or rejected (it is in :meth:`dead_letters`).
            max_messages: give up (``RuntimeError``) after running this many, so that
                a task that keeps sending itself cannot hang the test.
        """
        results = _drain(self.app, queues, skip_delays=True, max_messages=max_messages)
        if raise_errors:
            for result in results:
                if result.outcome in FAILED and result.error is not None:
                    raise result.error
        return results

    def dead_letters(self, queue: str) -> list[Envelope]:
        """The messages dead-lettered from ``queue`` (with their ``tw-error`` headers)."""
        return self.broker.dead_letters(queue)

    def waiting(self, queue: str) -> int:
        """How many messages wait in ``queue``, ready or delayed."""
        stats = self.broker.stats(queue)
        return stats.ready + (stats.delayed or 0)


@contextmanager
def in_memory(app: Warren | None = None) -> Iterator[InMemory]:
    """Switch ``app`` (default: the default app) to a new in-memory broker, and back.

    Its tasks, registered before or during the switch, send to memory; on exit the app
    uses its own broker again (connected anew on next use if it was not yet), and what
    was left in memory is dropped. Meant for tests, in one process.
    """
    app = default_app() if app is None else app
    broker = MemoryBroker(delivery_limit=app.settings.delivery_limit)
    # Pinned, the broker outlives app.close() (an ASGI lifespan ending with a test
    # client): the next send must still land here, never on the real broker. The real
    # one, connected or not, is left as it is; the queues declared are forgotten.
    saved = (app._pinned, app._declared)
    app._pinned, app._declared = broker, set()
    try:
        yield InMemory(app, broker)
    finally:
        app._pinned, app._declared = saved


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
    return _drain(app, queues, timeout_s=timeout_s, fail_on_error=fail_on_error,
                  run_delayed=run_delayed)


def _drain(app: Warren, queues: Sequence[str] | None, **options: Any) -> list[Result]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread: the usual case
        in_loop = False  # (drained outside the handler: a task's error has no __context__)
    else:
        in_loop = True
    if not in_loop:
        return _drain_here(app, queues, **options)
    # Called from an async test, whose loop runs in this thread: the async tasks need a
    # loop of their own, so the drain runs in a thread of its own (in the test's context).
    with ThreadPoolExecutor(1, thread_name_prefix="taskwarren-drain") as pool:
        drain = functools.partial(_drain_here, app, queues, **options)
        return pool.submit(contextvars.copy_context().run, drain).result()


def _drain_here(app: Warren, queues: Sequence[str] | None, *, timeout_s: float = 10.0,
                fail_on_error: bool = False, run_delayed: bool = True,
                skip_delays: bool = False, max_messages: int | None = None) -> list[Result]:
    with asyncio.Runner() as runner:  # its loop is made on the first async task's message
        return _drain_with(app, queues, runner, timeout_s=timeout_s,
                           fail_on_error=fail_on_error, run_delayed=run_delayed,
                           skip_delays=skip_delays, max_messages=max_messages)


def _drain_with(app: Warren, queues: Sequence[str] | None, runner: asyncio.Runner, *,
                timeout_s: float, fail_on_error: bool, run_delayed: bool, skip_delays: bool,
                max_messages: int | None) -> list[Result]:
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
            if not deliveries and skip_delays and broker.release_delayed():
                continue
            if not deliveries:
                waiting = any(
                    (s.delayed or 0) > 0 for s in (broker.stats(q) for q in names))
                if not (run_delayed and waiting):
                    return results
                if time.monotonic() > deadline:
                    raise TimeoutError(f"delayed work remains after {timeout_s}s")
                deliveries = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            for delivery in deliveries:
                if max_messages is not None and len(results) >= max_messages:
                    raise RuntimeError(f"still running after {max_messages} messages: does "
                                       "a task keep sending itself?")
                if wants_loop(executor, delivery):
                    # One loop for them all, as in a worker child (clients made on first
                    # use stay bound to it); one context each, as there too.
                    result = runner.run(run_async(executor, delivery),
                                        context=contextvars.copy_context())
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
