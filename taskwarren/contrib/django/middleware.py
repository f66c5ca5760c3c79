"""Worker middleware for Django projects: database connections fresh around every task."""

from __future__ import annotations

from concurrent.futures import Future

import structlog
from asgiref.sync import SyncToAsync
from django.db import close_old_connections

from taskwarren.middleware import Middleware, TaskRun

log = structlog.get_logger("taskwarren.django")


class CloseOldConnections(Middleware):
    """Before and after each task, close the database connections Django would close at
    the start and end of a request: those past ``CONN_MAX_AGE`` (at once with the default
    of 0) and those left unusable by an error.

    A worker process lives for days: without this, a connection the database server
    dropped in the meantime fails the next task that uses it, and one that is never
    closed holds a server slot for the life of the process.

    Django's connections belong to a thread. An ``async def`` task's ORM calls run on
    asgiref's thread-sensitive thread (``sync_to_async(thread_sensitive=True)``, outside
    a request), not on the event loop's: for such a task the connections of that thread
    are closed too, by a call queued to it. Its calls run one at a time in the order
    queued, so the one before the task runs ahead of the task's own queries, and the
    one after behind them.
    """

    def before_process(self, run: TaskRun) -> None:
        """Drop stale connections before the task runs."""
        self._close(run)

    def after_process(self, run: TaskRun) -> None:
        """Close what the task opened, as the end of a request would."""
        self._close(run)

    def _close(self, run: TaskRun) -> None:
        close_old_connections()
        if run.task is not None and run.task.is_async:
            # Queued now, not from a coroutine: nothing may cancel it before it is queued
            # (the loop ending, say), and it keeps its place ahead of the task's queries.
            SyncToAsync.single_thread_executor.submit(close_old_connections).add_done_callback(
                _report)


def _report(closing: Future[None]) -> None:
    error = closing.exception()
    if error is not None:
        log.warning("django.close_connections_failed", error_type=type(error).__name__)
