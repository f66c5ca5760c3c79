"""Job state: the worker's side of ``taskwarren_jobs``.

Before a task runs, :meth:`JobRecorder.skip` records its start in the job store in one
statement that also checks for a cancel: a cancelled job is acked without running, and a
cancel that comes later finds it running. After it ran, :meth:`JobRecorder.after_process`
hands what became of it (``retrying``, ``succeeded``, ``dead``) to the worker's consumer,
which publishes it to the store's events queue, confirmed, before the delivery is acked
(an :class:`~taskwarren.brokers.base.Also` settlement): the projector applies it to the
store later, and the task never waits on the database for it.

A cancel that finds a job running cannot stop it; it tells it: a :data:`CANCEL_TASK`
broadcast reaches every worker process, whose I/O thread (never waiting behind a busy
executor) notes the id, and the task sees :func:`cancel_requested` turn true. It may
stop early, or finish.

While the store cannot be reached (the start fails on a new connection as well as on
the one it had), tasks run unchecked (a warning says so every
:data:`WARN_EVERY_S`), and the start is not recorded; what became of them still is.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from taskwarren.brokers.base import ACK
from taskwarren.errors import StoreError
from taskwarren.message import MAX_TASK_ID_BYTES, clip, clip_start
from taskwarren.middleware.base import Middleware, TaskRun, describe
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import (
    MAX_ERROR_CHARS,
    MAX_TRACEBACK_CHARS,
    JobEvent,
    Start,
    encode_events,
    envelope_epoch,
    storable,
)
from taskwarren.store.thread_tables import ThreadTables

if TYPE_CHECKING:
    from taskwarren.brokers.base import Consumer, Delivery
    from taskwarren.task import Task

log = structlog.get_logger("taskwarren.jobs")

#: After the store failed, tasks run unchecked for this long before it is tried again.
RETRY_STORE_AFTER_S = 5.0
#: At most one "store unreachable" warning per this many seconds.
WARN_EVERY_S = 30.0

#: The broadcast that tells a running job it was cancelled (body: ``{"task_id": ...}``);
#: worker processes take it in their I/O thread, no task of this name runs.
CANCEL_TASK = "taskwarren.cancel-running"
#: Ids told to stop that this process may be running (bounded: a flood of requests for
#: ids it does not run cannot grow it without end).
_requested: set[str] = set()
#: (task id, run epoch) of jobs marked cancelled, as broadcast when they were: checked
#: before the store (the guarantee), so a cancel holds while the store is down. Bounded.
_cancelled: OrderedDict[tuple[str, int], None] = OrderedDict()
_MAX_REQUESTED = 10_000
#: The job the running task (thread, or asyncio task) works on.
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("taskwarren_job",
                                                                      default=None)

#: Verdicts kept for deliveries admitted and not yet run, at most.
MAX_VERDICTS = 10_000

#: What each outcome makes of a job.
_STATES = {"succeeded": "succeeded", "retried": "retrying", "dead_lettered": "dead",
           "rejected": "dead"}


_names: dict[int, str] = {}


def cancel_requested() -> bool:
    """Inside a task: whether a cancel came for the job it runs (``taskwarren jobs cancel``
    found it running). The task may stop early (return, or raise) or finish."""
    task_id = _current.get()
    return task_id is not None and task_id in _requested


def take_cancel_request(delivery: Delivery, consumer: Consumer) -> bool:
    """If ``delivery`` is a :data:`CANCEL_TASK` broadcast, note what it says and ack it;
    True if so.

    ``{"task_id": id}`` tells the task running it; with ``"epoch"``, the job was marked
    cancelled, and this process skips it without asking the store (which may be down
    when the job comes).
    """
    envelope = delivery.envelope
    if envelope.task != CANCEL_TASK:
        return False
    consumer.settle(delivery, ACK)
    try:
        request = json.loads(envelope.body)
        task_id, epoch = request["task_id"], request.get("epoch")
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        log.warning("jobs.cancel_request_malformed")
        return True
    if not isinstance(task_id, str) or not is_job_id(task_id):
        return True
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        if len(_cancelled) >= _MAX_REQUESTED:
            _cancelled.popitem(last=False)  # the oldest: the store still has it
        _cancelled[(task_id, epoch)] = None
    else:
        if len(_requested) >= _MAX_REQUESTED:
            _requested.clear()
        _requested.add(task_id)
    return True


def is_job_id(task_id: str) -> bool:
    """Whether ``task_id`` can be a job's: 1 to 255 bytes of text every database stores
    as it is (no NUL, no lone surrogate), as ``.send()`` makes them."""
    return 0 < len(task_id.encode("utf-8", "surrogatepass")) <= MAX_TASK_ID_BYTES \
        and storable(task_id) == task_id


def worker_name() -> str:
    """This process as the jobs table names it: ``host:pid``."""
    pid = os.getpid()
    name = _names.get(pid)
    if name is None:
        name = _names[pid] = f"{socket.gethostname()}:{pid}"[:255]
    return name


class JobRecorder(Middleware):
    """Records each job's start (with the cancel check) and its outcome.

    Args:
        table: opens this thread's own :class:`JobTable` (called once per thread and
            process, again after a failure).
        queue: the events queue.
        tasks: the app's registered tasks (only their jobs are admitted in batches).
    """

    def __init__(self, table: Callable[[], JobTable], queue: str,
                 tasks: Mapping[str, Task[Any, Any]]) -> None:
        self.queue = queue
        self._tasks = tasks
        # (task id, run epoch, attempt) -> the verdict admit() got, for skip() to take.
        self._verdicts: dict[tuple[str, int, int], str] = {}
        self._tables = ThreadTables(table)
        self._down_until = 0.0
        self._warned_at = -WARN_EVERY_S

    def close(self) -> None:
        """Close the store connections this process opened."""
        self._tables.close()

    def _store_failed(self, exc: Exception, doing: str, down: bool = True) -> None:
        self._tables.forget()
        if not down:
            return
        now = time.monotonic()
        self._down_until = now + RETRY_STORE_AFTER_S
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("jobs.store_unreachable", doing=doing, error_type=type(exc).__name__,
                        error=str(exc)[:300])

    def admit(self, deliveries: Sequence[Delivery]) -> None:
        """Record the starts of the jobs just received in one transaction (one commit
        for many, not one each); :meth:`skip` then reads the verdicts.

        A job is ``running`` from then on, though it may wait for a free executor: a
        cancel meanwhile says it is too late, which it is (it will run).
        """
        starts = []
        for delivery in deliveries:
            envelope = delivery.envelope
            task = self._tasks.get(envelope.task)
            if task is None or envelope.event or task.task_options.broadcast \
                    or not is_job_id(envelope.message_id):
                continue
            epoch = envelope_epoch(envelope)
            if (envelope.message_id, epoch) not in _cancelled:
                starts.append(Start(envelope.message_id, task.name, delivery.queue, epoch,
                                    envelope.attempt, float(envelope.timestamp or time.time())))
        if not starts:
            return
        verdicts = self._start(starts)
        if len(self._verdicts) > MAX_VERDICTS:
            self._verdicts.clear()  # admitted and never run (handed back): forget them
        for start, verdict in zip(starts, verdicts, strict=False):
            self._verdicts[(start.task_id, start.epoch, start.attempt)] = verdict

    def _start(self, starts: list[Start]) -> list[str]:
        """The store's verdicts on ``starts`` (empty while it cannot be reached)."""
        if time.monotonic() < self._down_until:
            return []
        # A failed statement drops the connection: one lost session (a server restart
        # long over, a KILL, an idle timeout) is no outage, and running unchecked would
        # run jobs whose cancel said they will not run. The store is down only if a new
        # connection fails too.
        for tries_left in (1, 0):
            try:
                return self._tables.get().start_many(starts, worker_name())
            except StoreError as exc:
                self._store_failed(exc, "checking for a cancel before running",
                                   down=not tries_left)
        return []

    def skip(self, run: TaskRun, delivery: Delivery) -> str | None:
        """Record the start; the reason not to run a cancelled job (or a superseded run).

        Event copies and broadcasts are not jobs (one message id, many runs), nor is a
        message whose id no database could store as sent (taskwarren never sends one):
        they are neither checked nor recorded.
        """
        envelope = delivery.envelope
        if envelope.event or (run.task is not None and run.task.task_options.broadcast) \
                or not is_job_id(envelope.message_id):
            return None
        _current.set(envelope.message_id)
        epoch = envelope_epoch(envelope)
        run.state["job"] = (envelope.message_id, epoch, float(envelope.timestamp or time.time()),
                            time.time())
        if (envelope.message_id, epoch) in _cancelled:
            return "the job was cancelled (as broadcast when it was)"
        verdict = self._verdicts.pop((envelope.message_id, epoch, run.attempt), None)
        if verdict is None:  # not admitted with the others (or the store failed then)
            verdicts = self._start([Start(envelope.message_id, run.task_name, run.queue, epoch,
                                          run.attempt, run.state["job"][2])])
            verdict = verdicts[0] if verdicts else "run"
        if verdict == "cancelled":
            return "the job was cancelled"
        if verdict == "superseded":
            return "a newer run of this job was started (jobs retry)"
        return None

    def after_process(self, run: TaskRun) -> None:
        """Have what became of the job published, confirmed, before its delivery is
        settled (``run.also``: the consumer does it, the executor does not wait)."""
        job = run.state.get("job")
        if job is None and run.envelope is not None and is_job_id(run.envelope.message_id):
            # Settled by the worker itself (poison, hard time limit): no start noted here.
            envelope = run.envelope
            job = (envelope.message_id, envelope_epoch(envelope),
                   float(envelope.timestamp or time.time()), None)
        state = _STATES.get(run.outcome)
        if job is None or run.task is None or (run.envelope is not None and (
                run.envelope.event or run.task.task_options.broadcast)):
            return  # not a job
        task_id, epoch, created_at, started_at = job
        _current.set(None)
        _requested.discard(task_id)
        if state is None:
            return  # skipped: its row already says cancelled
        now = time.time()
        error = traceback = None
        if run.exception is not None:
            error = clip(f"{type(run.exception).__name__}: {describe(run.exception)}",
                         MAX_ERROR_CHARS)
            traceback = clip_start(run.traceback, MAX_TRACEBACK_CHARS) or None
        event = JobEvent(task_id, state, now, task=run.task.name, queue=run.queue, epoch=epoch,
                         attempt=run.attempt, created_at=created_at,
                         scheduled_at=now + run.delay_s if state == "retrying" else None,
                         started_at=started_at, worker=worker_name(),
                         duration_s=run.duration_s or None, error=error, traceback=traceback)
        run.also.append((self.queue, encode_events([event], self.queue)))
