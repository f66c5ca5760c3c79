"""Async tasks in a worker child: one event loop thread runs up to N of them at once.

The I/O thread hands the deliveries of ``async def`` tasks to :class:`AsyncRunner`
(:meth:`AsyncRunner.submit`); N slot coroutines take them in turn, exactly as executor
threads take the plain ones: poison check, admission through the gate, run through the
middleware, settle (the consumer acts: publish confirmed, then ack). Heartbeats and
settlements stay with the I/O thread, so a busy loop delays neither.

Time limits are cancellations. Past its soft limit the loop cancels the task (it sees
``CancelledError`` at its ``await``; if it lets it out, its failure is
``SoftTimeLimitExceeded``). Past its hard limit the I/O thread settles the delivery
itself (``TimeLimitExceeded``, as for a plain task) and cancels the task; one still
running :data:`ABANDON_GRACE_S` later (it swallowed the cancellation, or blocks the
loop) makes the child replace itself, as a plain task does at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from taskwarren.brokers.base import ACK, REQUEUE, Consumer, Delivery
from taskwarren.errors import SoftTimeLimitExceeded
from taskwarren.logs import debug_enabled
from taskwarren.message import clip
from taskwarren.middleware import TaskRun
from taskwarren.task import Task
from taskwarren.worker.execute import Executor, Result, describe, set_aside
from taskwarren.worker.limits import Running

if TYPE_CHECKING:
    from taskwarren.worker.gate import Gate
    from taskwarren.worker.shared import KillRecord, RunningSlots

__all__ = ["ABANDON_GRACE_S", "DEFAULT_ASYNC_CONCURRENCY", "AsyncRunner", "room", "run_async",
           "wants_loop"]

log = structlog.get_logger("taskwarren.worker")

#: Async tasks each child runs at once by default: I/O-bound work waits mostly, and
#: a hundred waiting coroutines cost little (the adaptive prefetch tops out there too).
DEFAULT_ASYNC_CONCURRENCY = 100
#: Seconds an async task cancelled at its hard limit has to end before the child
#: replaces itself (one that swallows the cancellation, or blocks the loop, never will).
ABANDON_GRACE_S = 2.0


@dataclass(slots=True)
class _Escaped:
    """A ``SystemExit``/``KeyboardInterrupt`` a task raised, carried out of its asyncio
    task (which would otherwise re-raise it out of the event loop and end the thread)."""

    exc: BaseException


class Host(Protocol):
    """What the runner needs of its worker child."""

    executor: Executor
    gate: Gate
    lock: threading.Lock
    running: dict[int, Running]
    slots: RunningSlots
    kills: KillRecord
    index: int

    def leaving(self) -> bool:
        """Whether the child is stopping or being replaced."""

    def is_poison(self, delivery: Delivery) -> bool:
        """Dead-letter a message that killed too many processes; True if it was."""

    def observe(self, queue: str, duration_s: float) -> None:
        """Fold a task's duration into its queue's prefetch."""


async def _limited(awaitable: Awaitable[Any], soft_s: float | None) -> Any:
    try:
        if soft_s is None:
            return await awaitable
        try:
            async with asyncio.timeout(soft_s) as scope:
                return await awaitable
        except TimeoutError as exc:
            if scope.expired():
                raise SoftTimeLimitExceeded(
                    f"task cancelled at its soft time limit of {soft_s}s") from exc
            raise
    except (SystemExit, KeyboardInterrupt) as exc:
        return _Escaped(exc)


async def run_async(
    executor: Executor,
    delivery: Delivery,
    on_start: Callable[[Task[Any, Any]], None] | None = None,
    on_end: Callable[[], None] | None = None,
    calls: list[asyncio.Task[Any]] | None = None,
    report: Callable[[], bool] | None = None,
) -> Result:
    """Run one delivery of an ``async def`` task through the middleware; never raises.

    The async twin of :meth:`Executor.run`: the same hooks, decisions and records.
    ``calls`` (worker plumbing) receives the asyncio task awaiting the function, so the
    I/O thread can cancel it; ``report`` is :meth:`Executor.run`'s.
    """
    run, ready = executor.begin(delivery)
    if isinstance(ready, Result):
        return executor.end(run, ready, report)
    try:
        result = await _call(executor, run, delivery, ready, on_start, on_end, calls)
    except Exception as exc:
        result = executor.fault(delivery, exc)
    return executor.end(run, result, report)


async def _call(
    executor: Executor,
    run: TaskRun,
    delivery: Delivery,
    kwargs: dict[str, Any],
    on_start: Callable[[Task[Any, Any]], None] | None,
    on_end: Callable[[], None] | None,
    calls: list[asyncio.Task[Any]] | None,
) -> Result:
    task = run.task
    assert task is not None
    if debug_enabled():
        log.debug("task.started", task=task.name)
    started = time.perf_counter()
    try:
        try:
            if on_start is not None:
                on_start(task)
            call = asyncio.ensure_future(_limited(task.fn(**kwargs),
                                                  task.task_options.soft_time_limit_s))
            if calls is not None:
                calls.append(call)
            value = await call
        finally:
            if on_end is not None:
                on_end()
        if isinstance(value, _Escaped):
            raise value.exc
    except BaseException as exc:
        return executor.failed(run, delivery, exc, traceback.format_exc(),
                               time.perf_counter() - started)
    return Result(ACK, "succeeded", time.perf_counter() - started, task.name)


def wants_loop(executor: Executor, delivery: Delivery) -> bool:
    """Whether ``delivery`` is for an ``async def`` task (else a thread runs, or rejects, it)."""
    try:
        return executor.resolve(delivery).is_async
    except Exception:  # an executor thread rejects it, with the reason
        return False


def room(tasks: Iterable[Task[Any, Any]], queues: Iterable[str], threads: int,
         async_concurrency: int) -> dict[str, int]:
    """How many deliveries of each queue a child may run at once (its prefetch's floor):
    its threads, plus its async slots unless only plain tasks have the queue as theirs (a
    queue no task names may carry any call routed there with ``.options(queue=...)``)."""
    tasks = list(tasks)

    def async_room(q: str) -> int:
        mine = [t for t in tasks if t.queue == q]
        return async_concurrency if not mine or any(t.is_async for t in mine) else 0

    return {q: threads + async_room(q) for q in queues}


def _cancel_first(calls: list[asyncio.Task[Any]]) -> None:
    if calls:
        calls[0].cancel("hard time limit")


def _cancel_soon(loop: asyncio.AbstractEventLoop, calls: list[asyncio.Task[Any]]) -> None:
    """Cancel the call from another thread (the I/O thread, at the hard limit)."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to cancel
        loop.call_soon_threadsafe(_cancel_first, calls)


class AsyncRunner:
    """The event loop thread of a worker child, running ``size`` async tasks at once.

    Args:
        host: the worker child.
        size: how many async tasks run at once.
        first_slot: the running-slot index of the first of them (after the threads').
    """

    def __init__(self, host: Host, size: int, first_slot: int) -> None:
        self.host = host
        self.size = size
        self.first_slot = first_slot
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[Delivery | None] | None = None
        self._consumer: Consumer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="event-loop", daemon=True)
        #: Slots still taking deliveries (each ends on a ``None`` from :meth:`stop`).
        self.serving = size
        self._wake_due = False

    def start(self, consumer: Consumer) -> None:
        """Start the loop thread; returns once it takes deliveries."""
        self._consumer = consumer
        self._thread.start()
        self._ready.wait()

    def is_alive(self) -> bool:
        """Whether the loop thread still runs."""
        return self._thread.is_alive()

    def busy(self) -> bool:
        """Whether a slot still has work that is not past its hard limit."""
        if not self.is_alive():
            return False
        with self.host.lock:
            claimed = sum(1 for key, run in self.host.running.items()
                          if key < 0 and run.claimed)
        return self.serving > claimed

    def submit(self, deliveries: list[Delivery | None]) -> None:
        """Hand deliveries to the slots (``None`` ends one slot). Thread-safe."""
        if self._loop is not None and deliveries:
            # RuntimeError: the loop has closed (its thread died), and the child goes.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._put, deliveries)

    def stop(self) -> None:
        """End every slot once the deliveries already handed over are taken."""
        self.submit([None] * self.size)

    def _put(self, deliveries: list[Delivery | None]) -> None:
        assert self._inbox is not None
        for delivery in deliveries:
            self._inbox.put_nowait(delivery)

    def _main(self) -> None:
        structlog.contextvars.bind_contextvars(worker_pid=os.getpid(), child=self.host.index)
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            # The I/O thread sees this thread gone and replaces the child (the broker
            # hands back what it held).
            log.critical("worker.event_loop_lost", child=self.host.index,
                         error_type=type(exc).__name__, error=clip(describe(exc)),
                         exc_info=True)
        finally:
            self._ready.set()
            if self._consumer is not None:
                self._consumer.wakeup()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox = asyncio.Queue()
        self._ready.set()
        await asyncio.gather(*(self._slot(self.first_slot + i) for i in range(self.size)))

    async def _slot(self, slot: int) -> None:
        try:
            await self._serve_slot(slot)
        finally:
            self.serving -= 1  # only this thread writes it

    async def _serve_slot(self, slot: int) -> None:
        inbox, consumer, host = self._inbox, self._consumer, self.host
        assert inbox is not None and consumer is not None
        while True:
            delivery = await inbox.get()
            if delivery is None:
                return
            if set_aside(consumer, delivery, host.leaving()):
                continue
            await self._process(consumer, delivery, slot)
            if inbox.empty() and not self._wake_due:
                # Once for every task that ended in this turn of the loop, not once each:
                # the I/O thread then acks them together and fetches more.
                self._wake_due = True
                asyncio.get_running_loop().call_soon(self._wake, consumer)

    def _wake(self, consumer: Consumer) -> None:
        self._wake_due = False
        consumer.wakeup()

    async def _admit(self, alone: bool) -> bool:
        gate = self.host.gate
        if gate.try_admit(alone):
            return True
        # Rare (a suspect runs, or waits to run, alone): wait on the gate's lock in a
        # thread, not in the loop, which runs the tasks the wait is for.
        return await asyncio.get_running_loop().run_in_executor(None, gate.admit, alone)

    async def _process(self, consumer: Consumer, delivery: Delivery, slot: int) -> None:
        """Run and settle one delivery, as ``WorkerChild._process`` does a plain one."""
        host = self.host
        settled = False
        alone: bool | None = None
        key = -1 - slot  # thread idents are positive: no clash in ``host.running``
        try:
            if delivery.redelivered and host.is_poison(delivery):
                settled = True
                return
            wants_alone = delivery.redelivered and host.kills.suspected(
                delivery.envelope.message_id)
            if not await self._admit(wants_alone):
                settled = True
                consumer.settle(delivery, REQUEUE)
                consumer.wakeup()
                return
            alone = wants_alone
            calls: list[asyncio.Task[Any]] = []
            run = Running(delivery, key)
            loop = asyncio.get_running_loop()
            run.cancel = functools.partial(_cancel_soon, loop, calls)
            with host.lock:
                host.running[key] = run
            host.slots.set(host.index, slot, delivery.envelope.message_id)
            # A task of its own: what the hooks bind to the context (log fields, trace)
            # ends with the run, even one the I/O thread reported past its hard limit,
            # whose hooks this slot never calls.
            result = await asyncio.create_task(run_async(
                host.executor, delivery, run.arm, lambda: run.disarm(host.lock), calls,
                lambda: run.finish(host.lock)))
            host.slots.clear(host.index, slot)
            with host.lock:
                del host.running[key]
                if run.claimed:
                    settled = True
                    return
            host.observe(delivery.queue, result.duration_s)
            settled = True
            consumer.settle(delivery, result.action)
        finally:
            if alone is not None:
                host.gate.release(alone)
            if not settled:
                with host.lock:
                    run_now = host.running.pop(key, None)
                if run_now is None or not run_now.claimed:
                    host.slots.clear(host.index, slot)
                    consumer.settle(delivery, REQUEUE)
                    consumer.wakeup()
