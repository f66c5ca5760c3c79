"""One worker child: its own broker connection, an I/O thread, and executor threads.

The main thread is the I/O thread: it alone touches the connection (py-amqp is not
thread-safe). It polls deliveries, hands them to the executor threads, carries out
their settlements (acks coalesced, republishes confirmed first), keeps heartbeats
flowing during long tasks, enforces time limits and adapts the prefetch.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog

from taskwarren.app import Warren
from taskwarren.brokers.base import REQUEUE, Consumer, Delivery
from taskwarren.errors import (
    NotSupportedError,
    SoftTimeLimitExceeded,
    TaskwarrenError,
    TimeLimitExceeded,
)
from taskwarren.middleware import Chain, Middleware
from taskwarren.task import Task
from taskwarren.worker.execute import Executor, dead_letter, failure_action
from taskwarren.worker.shared import Heartbeats, KillRecord, RunningSlots

log = structlog.get_logger("taskwarren.worker")

#: Exit code of a child that replaced itself (hard time limit): restart it, count no death.
EXIT_REPLACE = 3
#: Seconds of work each consumer keeps buffered when the prefetch adapts.
PREFETCH_BUFFER_S = 0.05
#: Largest adaptive prefetch: enough in flight for tasks that take microseconds.
PREFETCH_MAX = 100
#: Longest the I/O thread sleeps without looking at heartbeats and time limits.
POLL_MAX_S = 1.0
#: Extra seconds a delivery may stay unacked beyond the longest hard time limit.
CONSUMER_TIMEOUT_MARGIN_S = 60.0
#: Seconds between two presence announcements of a child.
ANNOUNCE_INTERVAL_S = 1.0
#: Weight of the newest duration in the per-queue moving average.
EWMA_ALPHA = 0.2


@dataclass(slots=True)
class _Run:
    """What one executor thread is running."""

    delivery: Delivery
    thread_ident: int
    task: Task[Any, Any] | None = None
    soft_deadline: float = math.inf
    hard_deadline: float = math.inf
    soft_sent: bool = False
    claimed: bool = False  # settled by the I/O thread after the hard limit


@dataclass(slots=True)
class _QueueState:
    prefetch: int
    avg_s: float | None = None


def consumer_timeout_s(app: Warren) -> float | None:
    """The per-consumer delivery timeout to ask for, if the broker's default is too short.

    A task may run up to its hard time limit before its delivery is acked; the broker
    must not give up on the delivery before that. ``None`` keeps the broker's setting.
    """
    limits = [t.task_options.time_limit_s for t in app.tasks.values()]
    longest = max((limit for limit in limits if limit is not None), default=0.0)
    wanted = longest + CONSUMER_TIMEOUT_MARGIN_S
    return wanted if longest and wanted > app.settings.consumer_timeout_s else None


def warn_about_long_tasks(app: Warren) -> None:
    """Warn about tasks that may outlive the broker's consumer timeout."""
    limit = app.settings.consumer_timeout_s
    for task in app.tasks.values():
        time_limit = task.task_options.time_limit_s
        if time_limit is not None and time_limit + CONSUMER_TIMEOUT_MARGIN_S > limit:
            log.warning(
                "task.time_limit_above_consumer_timeout", task=task.name,
                time_limit_s=time_limit, consumer_timeout_s=limit,
                advice="taskwarren asks for a per-consumer x-consumer-timeout (RabbitMQ "
                       "3.12+); on older brokers raise consumer_timeout in rabbitmq.conf "
                       "and set TASKWARREN_CONSUMER_TIMEOUT_S to match",
            )


class WorkerChild:
    """Runs inside one child process of the pool.

    Args:
        app: the application whose tasks run here.
        queues: queues to consume.
        index: this child's slot in the pool.
        threads: executor threads.
        prefetch: pinned prefetch per consumer, or ``None`` to adapt.
        slots: shared record of running messages.
        kills: shared record of messages that killed processes.
        grace_s: how long running tasks may finish after a stop signal.
        on_signals_ready: called once this child's signal handlers are installed
            (the supervisor unblocks stop signals there).
        middleware: hooks around each task (metrics, for instance).
        heartbeats: where the I/O loop records that it is alive, for health checks.
    """

    def __init__(
        self,
        app: Warren,
        queues: Sequence[str],
        index: int,
        threads: int,
        prefetch: int | None,
        slots: RunningSlots,
        kills: KillRecord,
        grace_s: float,
        on_signals_ready: Callable[[], object] | None = None,
        middleware: Middleware | None = None,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self.app = app
        self.middleware = middleware or Chain()
        self.heartbeats = heartbeats
        self.on_signals_ready = on_signals_ready
        self.queues = list(queues)
        self.index = index
        self.threads = threads
        self.pinned_prefetch = prefetch
        self.slots = slots
        self.kills = kills
        self.grace_s = grace_s
        self.executor = Executor(app.tasks, app.settings.max_message_bytes)
        self._inbox: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._running: dict[int, _Run] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._replace = False
        self._queues = {q: _QueueState(prefetch or threads) for q in self.queues}
        self._consumer: Consumer | None = None
        self._next_announce = 0.0
        self._started_at = time.time()
        self._workers: list[threading.Thread] = []

    # -- signals ----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Every SIGTERM means "stop gracefully": a signal sent to the whole process group
        # reaches a child twice (directly and forwarded by the supervisor). Leaving at
        # once on a second signal is the supervisor's call: it SIGKILLs its children.
        self._stopping = True
        if self._consumer is not None:
            self._consumer.wakeup()

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Consume until stopped; returns the process exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards SIGTERM
        if self.on_signals_ready is not None:
            self.on_signals_ready()
        consumer = self._consumer = self.app.broker.consumer()
        timeout_s = consumer_timeout_s(self.app)
        self._listen(consumer)
        for name, state in self._queues.items():
            consumer.consume(name, state.prefetch, timeout_s)
        for t in range(self.threads):
            worker = threading.Thread(target=self._work, args=(t,), name=f"executor-{t}",
                                      daemon=True)
            worker.start()
            self._workers.append(worker)
        log.info("worker.child_started", child=self.index, pid=os.getpid(), queues=self.queues)
        reconnects = 0
        while not self._stopping and not self._replace:
            for delivery in consumer.poll(self._timeout()):
                self._inbox.put(delivery)
            if self.heartbeats is not None:
                self.heartbeats.beat(self.index, time.monotonic())
            self._announce(consumer)
            lost = getattr(consumer, "reconnects", 0)
            if lost != reconnects:
                reconnects = lost
                self.middleware.reconnected()
            self._enforce_limits()
            if self.pinned_prefetch is None:
                self._adapt_prefetch()
        return self._shutdown(consumer)

    def _listen(self, consumer: Consumer) -> None:
        """Bind this child's event subscriptions and listen for broadcasts.

        On a broker without them the tasks still run when sent directly: say so, once
        per child, rather than refuse to work.
        """
        try:
            for name, patterns in self.app.subscriptions(self.queues).items():
                consumer.subscribe(name, patterns)  # durable bindings, made before consuming
            if self.app.has_broadcasts():
                consumer.consume_broadcast(self.threads)
        except NotSupportedError as exc:
            if self.index == 0:
                log.warning("worker.events_unsupported", error=str(exc),
                            broker=self.app.broker_location)

    def _announce(self, consumer: Consumer) -> None:
        """Say, about once a second, that this child is alive (``taskwarren workers``)."""
        now = time.monotonic()
        if now < self._next_announce:
            return
        self._next_announce = now + ANNOUNCE_INTERVAL_S
        info = {
            "host": socket.gethostname(), "pool_pid": os.getppid(), "pid": os.getpid(),
            "child": self.index, "queues": self.queues, "in_flight": len(self._running),
            "started_at": self._started_at, "threads": self.threads,
        }
        try:
            consumer.announce(info)
        except TaskwarrenError as exc:
            if self._next_announce != math.inf:
                log.info("worker.presence_unsupported", error=str(exc))
            self._next_announce = math.inf

    def _timeout(self) -> float:
        now = time.monotonic()
        nearest = POLL_MAX_S
        for run in list(self._running.values()):
            nearest = min(nearest, run.soft_deadline - now, run.hard_deadline - now)
        return max(0.0, nearest)

    def _shutdown(self, consumer: Consumer) -> int:
        consumer.cancel()
        for _ in self._workers:
            self._inbox.put(None)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            for delivery in consumer.poll(0.05):
                consumer.settle(delivery, REQUEUE)
            alive = [w for w in self._workers if w.is_alive() and self._owns_unclaimed(w)]
            if not alive and not consumer.pending():
                break
        consumer.close()
        log.info("worker.child_stopped", child=self.index, pid=os.getpid(),
                 replaced=self._replace)
        return EXIT_REPLACE if self._replace else 0

    def _owns_unclaimed(self, worker: threading.Thread) -> bool:
        with self._lock:
            run = self._running.get(worker.ident or -1)
            return run is None or not run.claimed

    # -- executor threads -----------------------------------------------------------------

    def _work(self, thread_index: int) -> None:
        structlog.contextvars.bind_contextvars(worker_pid=os.getpid(), child=self.index)
        consumer = self._consumer
        assert consumer is not None
        ident = threading.get_ident()
        inbox = self._inbox
        while True:
            delivery = inbox.get()
            if delivery is None:
                return
            if self._stopping:
                consumer.settle(delivery, REQUEUE)  # prefetched, not started: hand it back
                consumer.wakeup()
                continue
            if delivery.redelivered and self._is_poison(delivery):
                continue
            run = _Run(delivery, ident)
            with self._lock:
                self._running[ident] = run
            self.slots.set(self.index, thread_index, delivery.envelope.message_id)
            task_name = delivery.envelope.task
            self.middleware.before_process(delivery.queue, task_name)
            result = self.executor.run(delivery, functools.partial(self._started, run))
            self.middleware.after_process(delivery.queue, task_name, result.outcome,
                                          result.duration_s, delivery.redelivered)
            self.slots.clear(self.index, thread_index)
            with self._lock:
                del self._running[ident]
                if run.claimed:
                    return  # the I/O thread settled it past the hard limit; we are abandoned
            state = self._queues.get(delivery.queue)
            if state is not None and result.duration_s:
                state.avg_s = result.duration_s if state.avg_s is None else (
                    EWMA_ALPHA * result.duration_s + (1 - EWMA_ALPHA) * state.avg_s)
            consumer.settle(delivery, result.action)
            if inbox.empty():
                consumer.wakeup()

    def _started(self, run: _Run, task: Task[Any, Any]) -> None:
        now = time.monotonic()
        run.task = task
        opts = task.task_options
        if opts.soft_time_limit_s is not None:
            run.soft_deadline = now + opts.soft_time_limit_s
        if opts.time_limit_s is not None:
            run.hard_deadline = now + opts.time_limit_s

    def _is_poison(self, delivery: Delivery) -> bool:
        """Dead-letter a message that has killed too many processes; True if it was."""
        kills = self.kills.kills(delivery.envelope.message_id)
        limit = self.app.settings.poison_kills
        if kills < limit:
            return False
        reason = f"delivery limit: killed its worker process {kills} times (limit {limit})"
        log.error("message.poison", task_id=delivery.envelope.message_id,
                  task=delivery.envelope.task, kills=kills)
        assert self._consumer is not None
        self._consumer.settle(delivery, dead_letter(delivery, "PoisonMessage", reason,
                                                    reason=reason))
        self._consumer.wakeup()
        return True

    # -- I/O thread duties -------------------------------------------------------------------

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            if now >= run.soft_deadline and not run.soft_sent:
                run.soft_sent = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(run.thread_ident), ctypes.py_object(SoftTimeLimitExceeded))
            if now >= run.hard_deadline and run.task is not None:
                with self._lock:
                    if run.claimed or run.thread_ident not in self._running:
                        continue
                    run.claimed = True
                limit = run.task.task_options.time_limit_s
                exc = TimeLimitExceeded(f"task ran past its hard time limit of {limit}s")
                action, outcome = failure_action(run.delivery, run.task, exc, "")
                log.error("task.time_limit_exceeded", task=run.task.name, outcome=outcome,
                          task_id=run.delivery.envelope.message_id, limit_s=limit)
                assert self._consumer is not None
                self._consumer.settle(run.delivery, action)
                self._replace = True  # a thread cannot be killed: replace the process

    def _adapt_prefetch(self) -> None:
        assert self._consumer is not None
        for name, state in self._queues.items():
            if state.avg_s is None:
                continue
            wanted = math.ceil(self.threads * PREFETCH_BUFFER_S / max(state.avg_s, 1e-6))
            wanted = max(self.threads, min(PREFETCH_MAX, wanted))
            if wanted >= state.prefetch * 2 or wanted * 2 <= state.prefetch:
                log.debug("worker.prefetch_changed", queue=name, prefetch=wanted,
                          avg_task_s=state.avg_s)
                state.prefetch = wanted
                self._consumer.consume(name, wanted)
