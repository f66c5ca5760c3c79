"""One worker child: its own broker connection, an I/O thread, and executor threads.

The main thread is the I/O thread: it alone touches the connection (py-amqp is not
thread-safe), but lends it to a lone idle executor thread (turns.py, for latency). It
polls deliveries, hands them to the executor threads, carries out their settlements
(acks coalesced, republishes confirmed first), keeps heartbeats flowing during long
tasks, enforces time limits and adapts the prefetch.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

import structlog

from taskwarren.app import Warren
from taskwarren.brokers.base import REQUEUE, Consumer, Delivery
from taskwarren.brokers.capabilities import BroadcastConsumer, EventConsumer, require
from taskwarren.errors import NotSupportedError
from taskwarren.message import MAX_ECHO_CHARS, clip
from taskwarren.middleware import TaskRun
from taskwarren.middleware.jobs import take_cancel_request
from taskwarren.middleware.poison import poison_action
from taskwarren.middleware.time_limit import consumer_timeout_s, warn_about_long_tasks
from taskwarren.worker.aio import ABANDON_GRACE_S, AsyncRunner, room, wants_loop
from taskwarren.worker.execute import Executor, describe, set_aside, with_records
from taskwarren.worker.gate import Gate
from taskwarren.worker.limits import Running, enforce
from taskwarren.worker.prefetch import QueueState, adapt
from taskwarren.worker.presence import Presence
from taskwarren.worker.shared import Heartbeats, KillRecord, RunningSlots
from taskwarren.worker.turns import Turn

__all__ = ["EXIT_CRASHED", "EXIT_REPLACE", "STOP_SIGNALS", "WorkerChild",
           "consumer_timeout_s", "warn_about_long_tasks"]

log = structlog.get_logger("taskwarren.worker")

#: Signals that stop the pool; the supervisor keeps them blocked across a fork.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

#: Exit code of a child that replaced itself (hard time limit): restart it, count no death.
EXIT_REPLACE = 3
#: Exit code of a child whose I/O thread raised: restart it, charge no task (EX_SOFTWARE).
EXIT_CRASHED = 70
#: Longest the I/O thread sleeps without looking at heartbeats and time limits.
POLL_MAX_S = 1.0
#: Longest the I/O thread's duties (heartbeat, presence, limits, prefetch) wait under load.
DUTIES_EVERY_S = 0.05


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
        heartbeats: where the I/O loop records that it is alive, for health checks.
        async_concurrency: async tasks run at once on the child's event loop (its
            running slots follow the threads'); 0, or no async task: no loop.
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
        heartbeats: Heartbeats | None = None,
        async_concurrency: int = 0,
    ) -> None:
        self.app = app
        self.middleware = app.middleware
        self._admits = app.middleware.uses("admit")
        self.heartbeats = heartbeats
        self.queues = list(queues)
        self.index = index
        self.threads = threads
        self.pinned_prefetch = prefetch
        self.slots = slots
        self.kills = kills
        self.grace_s = grace_s
        self.executor = Executor(app.tasks, app.settings.max_message_bytes, app.middleware)
        self._inbox: queue.SimpleQueue[Delivery | Turn | None] = queue.SimpleQueue()
        self.running: dict[int, Running] = {}
        self.lock = threading.Lock()
        self._stopping = self._replace = False
        self._broken = False  # an executor thread died: this child cannot run tasks
        self.aio = AsyncRunner(self, async_concurrency, threads) if (async_concurrency > 0 and any(
            t.is_async for t in app.tasks.values())) else None
        # Tasks a queue's deliveries may run at once: its prefetch's floor.
        self._room = room(app.tasks.values(), self.queues, threads,
                          async_concurrency if self.aio else 0)
        self._queues = {q: QueueState(prefetch or self._room[q]) for q in self.queues}
        self._consumer: Consumer | None = None
        self.gate = Gate(self.leaving, threads if self.aio is None else 0)  # 0: the loop's too
        self._duties_at, self._deadline = 0.0, math.inf  # duties due; nearest time limit
        self._reconnects = 0
        # One executor thread, no loop: it polls the consumer itself (turns.py).
        self._turn = Turn(self._inbox) if threads == 1 and self.aio is None else None
        self.presence = Presence(index, queues, threads, lambda: len(self.running),
                                 async_concurrency if self.aio else 0)
        self._workers: list[threading.Thread] = []

    # -- signals ----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Every SIGTERM means "stop gracefully" (a group's reaches us twice: directly and
        # forwarded); leaving at once is the supervisor's call: it SIGKILLs its children.
        self._stopping = True
        if self._consumer is not None:
            self._consumer.wakeup()

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Consume until stopped; returns the process exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards SIGTERM
        # The supervisor forked us with stop signals blocked, so that one sent before
        # the handlers above existed waits for them instead of killing us.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        consumer = self._consumer = self.app.broker.consumer()
        if not consumer.polls_from_any_thread:
            self._turn = None  # decided before the executor threads start
        timeout_s = consumer_timeout_s(self.app)
        self._listen(consumer)
        for name, state in self._queues.items():
            consumer.consume(name, state.prefetch, timeout_s)
        for t in range(self.threads):
            worker = threading.Thread(target=self._work, args=(t,), name=f"executor-{t}")
            worker.daemon = True
            worker.start()
            self._workers.append(worker)
        if self.aio is not None:
            self.aio.start(consumer)
        log.info("worker.child_started", child=self.index, pid=os.getpid(), queues=self.queues)
        self._duties_at = time.monotonic() + DUTIES_EVERY_S  # the first ones too wait
        polled: list[Delivery] = []
        while not self._stopping and not self._replace:
            if self._executors_lost():
                # Healthy no more: stop as a replaced child does, handing back its deliveries.
                log.error("worker.child_replacing", child=self.index, reason="executor lost")
                self._replace = True
                break
            timeout_s = self._timeout()
            self._hand_over(polled)  # just before this thread blocks: the GIL is then free
            if self._turn is not None and self._turn.lend():
                self._turn.wait_back(self._executors_lost, self.leaving)  # raises as its poll
                now, polled = time.monotonic(), []
                if now >= self._duties_at:  # a busy executor may ask again at once
                    self._duties(consumer, now)
                continue
            polled = self._receive(consumer, timeout_s)
            now = time.monotonic()
            if polled and now < self._duties_at and now < self._deadline:
                # Handed over first (GIL); an executor with an empty inbox wakes us for duties.
                continue
            self._duties(consumer, now)
        self._hand_over(polled)  # the stopping executors hand them back
        return self._shutdown(consumer)

    def _receive(self, consumer: Consumer, timeout_s: float) -> list[Delivery]:
        # Cancel requests (broadcasts) are taken by the thread polling, never behind a task.
        polled = [d for d in consumer.poll(timeout_s)
                  if d.queue in self._queues or not take_cancel_request(d, consumer)]
        if polled and self._admits:
            self.middleware.admit(polled)
        return polled

    def _duties(self, consumer: Consumer, now: float) -> None:
        self._duties_at = now + DUTIES_EVERY_S
        if self.heartbeats is not None and not self._broken:
            self.heartbeats.beat(self.index, now)
        self.presence.announce(consumer)
        lost = getattr(consumer, "reconnects", 0)
        if lost != self._reconnects:
            self._reconnects = lost
            self.middleware.reconnected()
        self._enforce_limits()
        if self.pinned_prefetch is None:
            self._adapt_prefetch()

    def _duties_due(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now >= self._duties_at:
            self._duties(consumer, now)

    def _hand_over(self, deliveries: list[Delivery]) -> None:
        """Give each delivery to the executor threads, or an async task's to the loop."""
        if self._turn is not None:
            self._turn.hand(deliveries)
            return
        loop: list[Delivery | None] = []
        for delivery in deliveries:
            if self.aio is not None and wants_loop(self.executor, delivery):
                loop.append(delivery)
            else:
                self._inbox.put(delivery)
        if self.aio is not None:
            self.aio.submit(loop)

    def _executors_lost(self) -> bool:
        return self._broken or not all(w.is_alive() for w in self._workers) or (
            self.aio is not None and not self.aio.is_alive())

    def _listen(self, consumer: Consumer) -> None:
        """Bind this child's event subscriptions and listen for broadcasts.

        On a broker without them the tasks still run when sent directly: say so, once
        per child, rather than refuse to work.
        """
        try:
            for name, patterns in self.app.subscriptions(self.queues).items():  # before consuming
                require(consumer, EventConsumer, "events").subscribe(name, patterns)
            if self.app.has_broadcasts():
                require(consumer, BroadcastConsumer, "broadcasts").consume_broadcast(self.threads)
        except NotSupportedError as exc:
            if self.index == 0:
                log.warning("worker.events_unsupported", error=str(exc),
                            broker=self.app.broker_location)

    def _timeout(self) -> float:
        now = time.monotonic()
        self._deadline = min([math.inf, *(run.next_deadline()
                                          for run in list(self.running.values()))])
        return max(0.0, min(now + POLL_MAX_S, self._deadline) - now)

    def _shutdown(self, consumer: Consumer) -> int:
        consumer.cancel()
        for _ in self._workers:
            self._inbox.put(None)
        if self.aio is not None:
            self.aio.stop()
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            for delivery in consumer.poll(0.05):
                consumer.settle(delivery, REQUEUE)
            alive = [w for w in self._workers if w.is_alive() and self._owns_unclaimed(w)]
            if not alive and not (self.aio and self.aio.busy()) and not consumer.pending():
                break
        consumer.close()
        log.info("worker.child_stopped", child=self.index, pid=os.getpid(),
                 replaced=self._replace)
        return EXIT_REPLACE if self._replace else 0

    def _owns_unclaimed(self, worker: threading.Thread) -> bool:
        with self.lock:
            run = self.running.get(worker.ident or -1)
            return run is None or not run.claimed

    # -- executor threads -----------------------------------------------------------------

    def _work(self, thread_index: int) -> None:
        structlog.contextvars.bind_contextvars(worker_pid=os.getpid(), child=self.index)
        try:
            self._work_loop(thread_index)
        except BaseException as exc:
            # This thread can run nothing more: the I/O thread replaces the child (its
            # connection closes, and the broker hands back whatever it still held).
            self._broken = True
            log.critical("worker.executor_lost", child=self.index, thread=thread_index,
                         error_type=type(exc).__name__, error=clip(describe(exc)),
                         exc_info=True)
            if self._consumer is not None:
                self._consumer.wakeup()

    def _work_loop(self, thread_index: int) -> None:
        consumer = self._consumer
        assert consumer is not None
        inbox, turn = self._inbox, self._turn
        while True:
            if turn is not None and turn.ask():
                consumer.wakeup()  # the I/O thread lends the consumer, or does its duties
            delivery = inbox.get()
            if delivery is None:
                return
            if isinstance(delivery, Turn):  # the consumer, lent while this thread idles
                if not delivery.use(lambda: self._receive(consumer, POLL_MAX_S),
                                    lambda: self._duties_due(consumer),
                                    lambda d: self._process(consumer, d, thread_index),
                                    self.leaving):
                    return
                continue
            if not self._process(consumer, delivery, thread_index):
                return  # the I/O thread settled it past the hard limit; we are abandoned
            if turn is None and inbox.empty():
                consumer.wakeup()

    def _process(self, consumer: Consumer, delivery: Delivery, thread_index: int) -> bool:
        """Run and settle one delivery, or set it aside; False if the I/O thread claimed it.

        Nothing may leave a delivery this thread took unsettled: should anything escape
        (a middleware raising SystemExit, say), the delivery is handed back first and the
        error then ends the thread, which replaces the child.
        """
        if set_aside(consumer, delivery, self._stopping):
            return True
        settled = False
        alone: bool | None = None  # once admitted: whether it runs alone
        try:
            if delivery.redelivered and self.is_poison(delivery):
                settled = True  # dead-lettered
                return True
            # Alone: no other thread, nor any task of the loop, runs beside it.
            wants_alone = (self.threads + (self.aio.size if self.aio else 0) > 1
                           and delivery.redelivered
                           and self.kills.suspected(delivery.envelope.message_id))
            if not self.gate.admit(wants_alone):
                settled = True  # stopping: hand it back unstarted
                consumer.settle(delivery, REQUEUE)
                consumer.wakeup()
                return True
            alone = wants_alone
            run = Running(delivery, threading.get_ident())
            with self.lock:
                self.running[run.thread_ident] = run
            self.slots.set(self.index, thread_index, delivery.envelope.message_id)
            result = self.executor.run(delivery, run.arm, functools.partial(run.disarm, self.lock),
                                       functools.partial(run.finish, self.lock))
            self.slots.clear(self.index, thread_index)
            with self.lock:
                del self.running[run.thread_ident]
                if run.claimed:
                    settled = True
                    return False
            self.observe(delivery.queue, result.duration_s)
            settled = True
            consumer.settle(delivery, result.action)
            return True
        finally:
            if alone is not None:
                self.gate.release(alone)
            if not settled:
                with self.lock:
                    run_now = self.running.pop(threading.get_ident(), None)
                if run_now is None or not run_now.claimed:
                    self.slots.clear(self.index, thread_index)
                    consumer.settle(delivery, REQUEUE)
                    consumer.wakeup()

    def observe(self, queue: str, duration_s: float) -> None:
        """Fold a task's duration into its queue's adaptive prefetch."""
        state = self._queues.get(queue)
        if state is not None:
            state.observe(duration_s)

    def leaving(self) -> bool:
        """Whether the child is stopping, or being replaced."""
        return self._stopping or self._replace or self._broken

    def is_poison(self, delivery: Delivery) -> bool:
        """Dead-letter a message that has killed too many processes; True if it was."""
        action = poison_action(delivery, self.kills.kills(delivery.envelope.message_id),
                               self.app.settings.poison_kills)
        if action is None:
            return False
        envelope, task = delivery.envelope, self.app.tasks.get(delivery.envelope.task)
        if task is not None:  # told before it is settled (the job store records it dead)
            told = TaskRun(task.name, clip(envelope.message_id, MAX_ECHO_CHARS),
                           envelope.attempt, delivery.queue, delivery.redelivered, task=task,
                           outcome="dead_lettered", envelope=envelope)
            self.executor.middleware.after_process(told)
            action = with_records(action, told)
        assert self._consumer is not None
        self._consumer.settle(delivery, action)
        self._consumer.wakeup()
        return True

    # -- I/O thread duties -------------------------------------------------------------------

    def _enforce_limits(self) -> None:
        assert self._consumer is not None
        consumer, executor = self._consumer, self.executor
        if enforce(self.running, self.lock, lambda run, task: consumer.settle(
                run.delivery, executor.past_hard_limit(task, run.delivery)),
                ABANDON_GRACE_S, self._replace):
            self._replace = True

    def _adapt_prefetch(self) -> None:
        assert self._consumer is not None
        adapt(self._queues, self._room, self._consumer.consume)
