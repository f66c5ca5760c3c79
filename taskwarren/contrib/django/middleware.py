"""Worker middleware for Django projects: database connections fresh around every task."""

from __future__ import annotations

from django.db import close_old_connections

from taskwarren.middleware import Middleware, TaskRun


class CloseOldConnections(Middleware):
    """Before and after each task, close the database connections Django would close at
    the start and end of a request: those past ``CONN_MAX_AGE`` (at once with the default
    of 0) and those left unusable by an error.

    A worker process lives for days: without this, a connection the database server
    dropped in the meantime fails the next task that uses it, and one that is never
    closed holds a server slot for the life of the process.
    """

    def before_process(self, run: TaskRun) -> None:
        """Drop stale connections before the task runs."""
        close_old_connections()

    def after_process(self, run: TaskRun) -> None:
        """Close what the task opened, as the end of a request would."""
        close_old_connections()
