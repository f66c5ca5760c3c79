"""The pool: fork the children, restart the dead, forward stop signals, exit 0 when done."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import structlog

from taskwarren.app import Warren
from taskwarren.message import clip
from taskwarren.worker.aio import DEFAULT_ASYNC_CONCURRENCY
from taskwarren.worker.execute import describe
from taskwarren.worker.monitor import Monitor, pool_health
from taskwarren.worker.process import (
    EXIT_CRASHED,
    EXIT_REPLACE,
    STOP_SIGNALS,
    WorkerChild,
    warn_about_long_tasks,
)
from taskwarren.worker.shared import Heartbeats, KillRecord, RunningSlots

log = structlog.get_logger("taskwarren.worker")

#: A child that dies sooner than this after starting is restarted after a pause.
QUICK_DEATH_S = 1.0
#: Longest pause before restarting a child that keeps dying at once.
RESTART_PAUSE_MAX_S = 10.0
#: prctl option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1
#: Extra seconds after the grace period before stragglers are killed.
STOP_MARGIN_S = 5.0
#: Seconds the sidecars get at least to stop once the task children are gone (the
#: projector applies what waits for up to ``FINAL_DRAIN_S`` of them).
SIDECAR_STOP_S = 8.0
#: The signal that stops a sidecar: the pool's own, sent once the task children are
#: gone (and by the kernel when the supervisor dies). A SIGTERM or SIGINT sent to the
#: whole process group (systemd's default, a terminal's Ctrl-C) leaves sidecars running.
SIDECAR_STOP_SIGNAL = signal.SIGUSR1


class Supervisor:
    """Keeps ``concurrency`` child processes consuming ``queues``.

    Args:
        app: the application.
        queues: queues every child consumes.
        concurrency: child processes.
        threads: executor threads per child.
        prefetch: pinned prefetch, or ``None`` to adapt.
        grace_s: time running tasks get to finish after a stop signal.
        metrics_port: serve ``/metrics`` and ``/healthz`` on this port.
        sidecars: functions each run in a process of their own beside the children (the
            outbox relay), restarted when they die; each returns when the event it is
            given is set (on a stop signal, once the task children have stopped).
        async_concurrency: ``async def`` tasks each child runs at once on its event loop.
    """

    def __init__(
        self,
        app: Warren,
        queues: Sequence[str],
        concurrency: int,
        threads: int = 1,
        prefetch: int | None = None,
        grace_s: float | None = None,
        metrics_port: int | None = None,
        sidecars: Sequence[Callable[[threading.Event], None]] = (),
        async_concurrency: int = DEFAULT_ASYNC_CONCURRENCY,
    ) -> None:
        self.app = app
        self.queues = list(queues)
        self.concurrency = concurrency
        self.threads = threads
        self.prefetch = prefetch
        self.grace_s = app.settings.grace_s if grace_s is None else grace_s
        self.middleware = app.middleware  # ``child_started`` runs in the children
        self.metrics_port = metrics_port
        self.monitor: Monitor | None = None
        self.heartbeats = Heartbeats(concurrency)
        has_async = any(t.is_async for t in app.tasks.values())
        self.async_concurrency = async_concurrency if has_async else 0
        # A running slot per thread and per async task of each child.
        self.slots = RunningSlots(concurrency, threads + self.async_concurrency)
        self.kills = KillRecord()
        self.restarts = 0
        # Sidecars are children with negative indices: no slots, heartbeats or charges.
        self.sidecars = {-1 - i: fn for i, fn in enumerate(sidecars)}
        self._children: dict[int, multiprocessing.process.BaseProcess] = {}
        self._started_at: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = {}
        self._signals = 0
        self._ctx = multiprocessing.get_context("fork")
        self._parent_pid = os.getpid()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1

    def run(self) -> int:
        """Run the pool until a stop signal; returns the exit code."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        previous_fd = signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        warn_about_long_tasks(self.app)
        log.info("worker.pool_started", pid=os.getpid(), concurrency=self.concurrency,
                 threads=self.threads, async_concurrency=self.async_concurrency,
                 queues=self.queues, broker=self.app.broker_location)
        if self.metrics_port is not None:
            self.monitor = Monitor(self.metrics_port, self._health)
            self.monitor.start()
            log.info("worker.monitor_started", port=self.monitor.port)
        try:
            for index in [*range(self.concurrency), *self.sidecars]:
                self._spawn(index)
            while not self._signals:
                self._wait(wake_r, timeout=None)
                self._reap(restart=True)
            return self._stop(wake_r)
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            signal.set_wakeup_fd(previous_fd)
            os.close(wake_r)
            os.close(wake_w)

    def _spawn(self, index: int) -> None:
        process = self._ctx.Process(target=self._child_main, args=(index,),
                                    name=f"taskwarren-child-{index}")
        # Stop signals stay blocked across the fork until the child has its own handlers:
        # one arriving in between is then delivered to the child's handler, not lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self._children[index] = process
        self._started_at[index] = time.monotonic()

    def _health(self) -> tuple[bool, dict[str, Any]]:
        return pool_health(self.heartbeats.ages(time.monotonic()), self.concurrency)

    def _child_main(self, index: int) -> None:
        signal.set_wakeup_fd(-1)
        _stop_with_parent(self._parent_pid, SIDECAR_STOP_SIGNAL if index < 0 else signal.SIGTERM)
        if self.monitor is not None:
            self.monitor.close_in_child()
        if index < 0:
            _sidecar_main(self.sidecars[index])
        self.middleware.child_started(index)
        child = WorkerChild(self.app, self.queues, index, self.threads, self.prefetch,
                            self.slots, self.kills, self.grace_s, heartbeats=self.heartbeats,
                            async_concurrency=self.async_concurrency)
        code = EXIT_CRASHED
        try:
            code = child.run()
        except BaseException as exc:
            log.exception("worker.child_crashed", child=index, error=clip(describe(exc)))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _wait(self, wake_r: int, timeout: float | None) -> None:
        sentinels: list[int] = [p.sentinel for p in self._children.values()]
        ready = multiprocessing.connection.wait([wake_r, *sentinels], timeout)
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)

    def _reap(self, restart: bool) -> None:
        for index, process in list(self._children.items()):
            if process.is_alive():
                continue
            process.join()
            code = process.exitcode
            del self._children[index]
            if index >= 0:  # a sidecar (negative index) ran no task
                if code not in (0, EXIT_REPLACE, EXIT_CRASHED) and not self._signals:
                    self._charge(index, code)
                self.slots.clear_child(index)
                self.heartbeats.clear(index)
            if process.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
            if not restart or self._signals:
                continue
            self.restarts += 1
            self.middleware.child_restarted()
            log.warning("worker.child_restarting", child=index, exitcode=code)
            lived = time.monotonic() - self._started_at.get(index, 0.0)
            quick = self._quick_deaths.get(index, 0) + 1 if lived < QUICK_DEATH_S else 0
            self._quick_deaths[index] = quick
            if quick > 1:
                time.sleep(min(RESTART_PAUSE_MAX_S, 0.1 * 2 ** quick))
            if not self._signals:  # a stop may have arrived during the pause
                self._spawn(index)

    def _charge(self, index: int, code: int | None) -> None:
        """Count a child's death against the message that caused it, if one surely did.

        The child died of a signal (a segfault, the OOM killer, SIGKILL) or a task ended
        its process (``os._exit``); its own failures exit with :data:`EXIT_CRASHED` and
        are nobody's. With one message running, that message did it. With several, the
        evidence names none of them: none is charged (charging them all would park
        innocent neighbours as poison), but each becomes a suspect and runs alone in its
        next process, where a death is evidence against it.
        """
        running = self.slots.running(index)
        if len(running) == 1:
            kills = self.kills.add(running[0])
            log.error("worker.child_killed_by_message", task_id=running[0], kills=kills,
                      exitcode=code)
        elif running:
            for message_id in running:
                self.kills.suspect(message_id)
            log.error("worker.child_died_unattributed", child=index, exitcode=code,
                      running=len(running), task_ids=running[:8],
                      next_step="each runs alone next time")

    def _stop(self, wake_r: int) -> int:
        """Stop the task children, then the sidecars: the relay and the projector carry on
        while the tasks finish, and the projector applies their last events on its way out."""
        log.info("worker.pool_stopping", grace_s=self.grace_s)
        signals_seen = self._signals
        deadline = time.monotonic() + self.grace_s + STOP_MARGIN_S
        for sidecars in (False, True):
            group = [i for i in self._children if (i < 0) == sidecars]
            if sidecars:  # the whole grace still, and some seconds after the tasks at least
                deadline = max(deadline, time.monotonic() + SIDECAR_STOP_S)
            for index in group:
                pid = self._children[index].pid
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, SIDECAR_STOP_SIGNAL if sidecars else signal.SIGTERM)
            while any(i in self._children for i in group) and time.monotonic() < deadline:
                self._wait(wake_r, timeout=max(0.0, deadline - time.monotonic()))
                self._reap(restart=False)
                if self._signals > signals_seen:
                    log.warning("worker.pool_killed", reason="second signal")
                    self._kill_all()
                    return 1
            if any(i in self._children for i in group):
                log.error("worker.pool_killed", reason="grace period over")
                self._kill_all()
                return 1
        log.info("worker.pool_stopped")
        return 0

    def _kill_all(self) -> None:
        for process in self._children.values():
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        for process in self._children.values():
            process.join()
        self._children.clear()


def _sidecar_main(fn: Callable[[threading.Event], None]) -> None:
    """Run a sidecar until :data:`SIDECAR_STOP_SIGNAL`, then exit (0 when it returned,
    else crashed). SIGTERM and SIGINT are the supervisor's to act on: it stops the task
    children first, then the sidecars."""
    stop = threading.Event()
    signal.signal(SIDECAR_STOP_SIGNAL, lambda *_: stop.set())
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    code = EXIT_CRASHED
    try:
        fn(stop)
        code = 0
    except BaseException as exc:
        log.error("worker.sidecar_crashed", error=clip(describe(exc)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _stop_with_parent(parent_pid: int, signum: int) -> None:
    """Ask the kernel for ``signum`` when the supervisor dies (Linux), so no child
    outlives it.

    A child whose supervisor was killed would go on consuming with nobody to replace it
    or forward a stop; with this it stops gracefully and the broker keeps the rest.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # it died before we asked
        os.kill(os.getpid(), signum)
