"""Schedules wired to an app: its scheduled tasks, its job store, its settings.

A task with ``cron=`` or ``every=`` is a schedule. ``taskwarren worker`` runs a
:class:`Scheduler` beside its pool (``--no-scheduler`` to opt out), on every machine:
each due tick is decided once in the job store (:mod:`taskwarren.store.schedules`), so
any number of schedulers may race and each tick becomes one job. There is no leader:
correctness comes from the store's row lock and the tick's primary key, and nothing
is saved by electing one but a few idle transactions.

Each tick's job gets a task id made from the schedule and the tick (a UUID5), and, if
the task takes a ``scheduled_at`` parameter, the tick's nominal time (aware, UTC).
"""

from __future__ import annotations

import inspect
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

from taskwarren.app import Warren
from taskwarren.cron import Cron, Every, rule_text
from taskwarren.errors import ConfigurationError, StoreError
from taskwarren.message import Envelope, encode
from taskwarren.options import SCHEDULED_AT
from taskwarren.store import open_store
from taskwarren.store.jobs import utc
from taskwarren.store.schedules import Pass, ScheduleRow, ScheduleSpec, ScheduleTable
from taskwarren.task import Task
from taskwarren.text import printable
from taskwarren.urls import mask_url, scheme_of

__all__ = ["Scheduler", "check_schedules", "list_schedules", "run_scheduler",
           "schedule_specs", "spec_of", "tick_envelope", "tick_task_id"]

log = structlog.get_logger("taskwarren.schedules")

#: The namespace of tick task ids (UUID5 of the schedule's name and the tick).
TICK_NAMESPACE = uuid.UUID("5b0c6f2e-2f7e-4a55-9d0e-7461736b7761")
#: How often a scheduler looks again at a schedule another definition holds.
SUPERSEDED_RECHECK_S = 60.0
#: The longest a scheduler sleeps, due tick or not (it then looks again).
MAX_SLEEP_S = 60.0
#: Skipped ticks in a row after which a skip is logged as a warning (and every ten times
#: as many after that): the live job may be stuck, or no projector records its end.
SKIPS_WARNING = 10
#: Waits after a failed pass: doubling from the first, up to the last.
RETRY_S = (0.5, 30.0)


def spec_of(task: Task[..., object]) -> ScheduleSpec | None:
    """The schedule of ``task``, or ``None`` if it has none.

    Its definition is the rule, the queue and the overlap policy
    (``every 30s; queue=sync; overlap=allow``): a change to any of them is a new
    definition.
    """
    opts = task.task_options
    rule: Cron | Every
    if opts.cron is not None:
        rule = Cron(opts.cron, opts.tz)
    elif opts.every_s is not None:
        rule = Every(opts.every_s)
    else:
        return None
    text = f"{rule_text(rule)}; queue={task.queue}; overlap={opts.overlap}"
    return ScheduleSpec(name=task.name, spec=text, task=task.name, queue=task.queue,
                        overlap=opts.overlap, ticks=rule.ticks, next_after=rule.next_after)


def schedule_specs(app: Warren) -> list[ScheduleSpec]:
    """The schedules of ``app``'s tasks, by name."""
    specs = [spec_of(task) for task in app.tasks.values()]
    return sorted((s for s in specs if s is not None), key=lambda s: s.name)


def tick_task_id(name: str, tick: int) -> str:
    """The task id of the job of ``name``'s tick at ``tick``: the same in every scheduler."""
    return str(uuid.uuid5(TICK_NAMESPACE, f"{name}\x00{tick}"))


def tick_envelope(task: Task[..., object], tick: int) -> Envelope:
    """The envelope of ``task``'s job for the tick at ``tick`` (seconds since the epoch)."""
    kwargs = ({SCHEDULED_AT: datetime.fromtimestamp(tick, UTC)}
              if SCHEDULED_AT in inspect.signature(task.fn).parameters else {})
    body = task.encode_call((), kwargs)
    return encode(task.name, task.queue, body, task_id=tick_task_id(task.name, tick))


def check_schedules(app: Warren) -> list[ScheduleSpec]:
    """``app``'s schedules, checked for running: a store, job state where overlap is
    skipped, the schedule tables.

    Raises:
        ConfigurationError: what is missing, in one line.
        ArgumentsError: a task's ``scheduled_at`` does not take a datetime.
        StoreError: the store cannot be reached, or its tables are missing.
    """
    specs = schedule_specs(app)
    if not specs:
        return specs
    settings = app.settings
    url = settings.effective_store_url
    if url is None:
        raise ConfigurationError(
            f"{len(specs)} task(s) run on a schedule, and schedules live in a job store: "
            "set TASKWARREN_STORE_URL (the embedded SQLite broker's file holds one)")
    skipping = [s.name for s in specs if s.overlap == "skip"]
    if skipping and not settings.records_jobs:
        raise ConfigurationError(
            f"schedule {skipping[0]!r} skips a tick while its last job is live "
            "(overlap='skip', the default), which needs job state: set TASKWARREN_JOBS=on, "
            "or give the task overlap='allow'")
    for spec in specs:  # a scheduled_at its task cannot take fails here, not at each tick
        tick_envelope(app.tasks[spec.task], 0)
    table = ScheduleTable(open_store(url, settings.connect_timeout_s))
    try:
        table.check()
    finally:
        table.store.close()
    return specs


class Scheduler:
    """Decides ``app``'s due ticks, one schedule at a time, until stopped.

    It sleeps until the next tick by the store's clock (measured at each pass against
    this machine's, so a skewed local clock changes nothing), and never polls faster
    than the ticks come.

    Args:
        app: the application.
        open_table: opens a :class:`ScheduleTable` on the app's store.
    """

    def __init__(self, app: Warren, open_table: Callable[[], ScheduleTable]) -> None:
        self.app = app
        self.open_table = open_table
        self.specs = schedule_specs(app)
        self.tasks = {s.name: app.tasks[s.task] for s in self.specs}
        self.table: ScheduleTable | None = None
        self.offset_s = 0.0  # the store's clock minus this machine's
        self.due: dict[str, float] = {s.name: 0.0 for s in self.specs}
        self.superseded: set[str] = set()
        self.registered = False
        self.skips: dict[str, int] = {}  # ticks skipped in a row, by schedule

    def run(self, stop: threading.Event) -> None:
        """Decide ticks until ``stop`` is set; a failing store is retried, backing off."""
        retry_s = RETRY_S[0]
        while not stop.is_set():
            try:
                wait_s = self.run_once()
                retry_s = RETRY_S[0]
            except StoreError as exc:
                log.warning("schedule.store_failed", error=str(exc), retry_in_s=retry_s)
                self.close()
                wait_s, retry_s = retry_s, min(retry_s * 2, RETRY_S[1])
            stop.wait(wait_s)
        self.close()

    def close(self) -> None:
        """Close the store connection (the next pass opens another)."""
        if self.table is not None:
            self.table.store.close()
            self.table = None

    def _open(self) -> ScheduleTable:
        if self.table is None:
            table = self.open_table()
            try:
                if not self.registered:
                    # Once per process: a scheduler that reconnects (after a store outage)
                    # must not take a schedule back from one started after it.
                    for name, missed in table.register(self.specs):
                        log.info("schedule.defined", schedule=name,
                                 previous_definition_missed=missed)
                    self.registered = True
                self.offset_s = table.now() - time.time()
            except BaseException:
                table.store.close()
                raise
            self.table = table
        return self.table

    def _store_now(self) -> float:
        return time.time() + self.offset_s

    def run_once(self) -> float:
        """Decide every schedule that is due; the seconds until the next is.

        Raises:
            StoreError: the store failed (what was committed stays decided).
        """
        table = self._open()
        settings = self.app.settings
        keep_s = max(settings.job_retention_s, settings.schedule_catch_up_s)
        if settings.job_retention_s == 0:
            keep_s = 0.0
        for spec in self.specs:
            if self.due[spec.name] > self._store_now():
                continue
            task = self.tasks[spec.name]

            def build(tick: int, task: Task[..., object] = task) -> Envelope:
                return tick_envelope(task, tick)

            while True:
                result = table.decide(spec, build,
                                      catch_up_s=settings.schedule_catch_up_s,
                                      record=settings.records_jobs, keep_s=keep_s)
                self.offset_s = result.now - time.time()
                self._report(spec, result)
                if not result.more:
                    break
        if not self.due:
            return MAX_SLEEP_S
        return min(max(min(self.due.values()) - self._store_now(), 0.005), MAX_SLEEP_S)

    def _report(self, spec: ScheduleSpec, result: Pass) -> None:
        if result.superseded:
            self.due[spec.name] = result.now + SUPERSEDED_RECHECK_S
            if spec.name not in self.superseded:
                self.superseded.add(spec.name)
                log.warning("schedule.superseded", schedule=spec.name, mine=spec.spec,
                            detail="the store holds another definition, from a scheduler "
                                   "started later: this one leaves the schedule to it")
            return
        if spec.name in self.superseded:
            self.superseded.discard(spec.name)
        if result.took_over:
            log.warning("schedule.taken_over", schedule=spec.name, definition=spec.spec,
                        previous_definition_missed=result.missed,
                        detail="the stored definition's next tick was long overdue: no "
                               "running scheduler has it")
            result.missed = 0  # counted under the old definition: not this one's misses
        assert result.next_tick is not None
        self.due[spec.name] = float(result.next_tick)
        for tick, task_id in result.enqueued:
            log.info("schedule.enqueued", schedule=spec.name, tick=utc(tick), task_id=task_id)
        if result.enqueued:
            self.skips[spec.name] = 0
        for tick, holder in result.skipped:
            skips = self.skips[spec.name] = self.skips.get(spec.name, 0) + 1
            event = log.info
            if skips == SKIPS_WARNING or skips % (SKIPS_WARNING * 10) == 0:
                event = log.warning  # its job is stuck, or no projector records its end
            event("schedule.skipped", schedule=spec.name, tick=utc(tick), live_job=holder,
                  skipped_in_a_row=skips,
                  reason="overlap: the previous job is still queued or running")
        if result.missed and result.missed_span is not None:
            first, last = result.missed_span
            log.warning("schedule.missed", schedule=spec.name, ticks=result.missed,
                        first=utc(first), last=utc(last),
                        catch_up_s=self.app.settings.schedule_catch_up_s)


def run_scheduler(app: Warren, stop: threading.Event) -> None:
    """Run ``app``'s scheduler until ``stop`` is set (``taskwarren worker``'s sidecar)."""
    url = app.settings.effective_store_url
    if url is None:
        raise ConfigurationError("no job store: set TASKWARREN_STORE_URL")
    timeout_s = app.settings.connect_timeout_s

    def open_table() -> ScheduleTable:
        assert url is not None
        return ScheduleTable(open_store(url, timeout_s))

    scheduler = Scheduler(app, open_table)
    log.info("scheduler.started", store=mask_url(url), pid=os.getpid(),
             schedules=[s.name for s in scheduler.specs])
    scheduler.run(stop)


def list_schedules(app: Warren, *, code_given: bool = True) -> list[dict[str, Any]]:
    """``app``'s schedules with what the job store knows of each, and the store's schedules
    ``app`` does not define, by name (what ``taskwarren schedules`` and the dashboard show).

    Each is a dict: ``name``, ``schedule`` (this code's definition, else the stored one),
    ``stored``, ``overlap``, ``status`` (``active``: the store holds this definition;
    ``new``: no scheduler has run it yet; ``superseded``: the store holds another one;
    ``not in code``; ``stored`` when ``code_given`` is False: the caller loaded no
    code), ``last_tick`` and ``next_tick`` (ISO-8601, UTC, or ``None``),
    ``missed``, ``last_job``; and ``_last`` / ``_next``, the same ticks in seconds.

    Raises:
        ConfigurationError: no job store, or a SQLite store file that does not exist
            (reading it would create an empty one).
        StoreNotInitializedError: the store has no schedule tables.
        StoreError: it cannot be read.
    """
    specs = {s.name: s for s in schedule_specs(app)}
    store_url = app.settings.effective_store_url
    if store_url is None:
        raise ConfigurationError("no job store: set TASKWARREN_STORE_URL (schedules "
                                 "live in a job store)")
    if scheme_of(store_url) == "sqlite":
        path = unquote(urlsplit(store_url).path[1:])
        if not os.path.exists(path):
            raise ConfigurationError(f"no job store: the SQLite file {printable(path)!r} "
                                     "does not exist")
    table = ScheduleTable(open_store(store_url, app.settings.connect_timeout_s))
    try:
        rows = {r.name: r for r in table.rows()}
    finally:
        table.store.close()
    listed: list[dict[str, Any]] = []
    for name in sorted(set(specs) | set(rows)):
        spec, row = specs.get(name), rows.get(name)
        listed.append(_entry(name, spec.spec if spec else None,
                             spec.overlap if spec else None, row,
                             spec.next_after if spec else None, code_given))
    return listed


def _entry(name: str, mine: str | None, overlap: str | None, row: ScheduleRow | None,
           next_after: Callable[[int], int] | None, code_given: bool) -> dict[str, Any]:
    if row is None:
        status = "new"
    elif mine is None:
        status = "not in code" if code_given else "stored"
    elif row.spec != mine:
        status = "superseded"
    else:
        status = "active"
    next_tick = row.next_tick if row is not None and status in ("active", "stored") else None
    if next_tick is None and next_after is not None:
        next_tick = next_after(int(datetime.now(UTC).timestamp()))
    last_tick = row.last_tick if row else None
    return {
        "name": name, "schedule": mine if mine is not None else (row.spec if row else None),
        "stored": row.spec if row else None, "overlap": overlap, "status": status,
        "last_tick": utc(last_tick), "next_tick": utc(next_tick),
        "missed": row.missed if row else 0, "last_job": row.last_job if row else None,
        "_last": last_tick, "_next": next_tick}
