"""``taskwarren jobs list|show|cancel|retry``: the job store's ``taskwarren_jobs``, by CLI.

Everything a row holds came from a message, so it is hostile: the table and ``show``
print control characters and escape sequences as visible escapes (``\\x1b``), never raw,
and cut long fields; ``--json`` prints JSON (which escapes them). Times in ``--json`` are
ISO-8601 strings in UTC (``2026-12-07T02:30:07.123456+00:00``) or ``null``.

Exit codes: 0 done; 1 the job store is not configured or cannot be used, an unknown
job, a cancel that came too late, a retry refused; 2 a malformed option (click's usage
error).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from taskwarren.app import Warren
from taskwarren.errors import ConfigurationError, StoreError, StoreNotInitializedError
from taskwarren.jobs import since_seconds
from taskwarren.settings import Settings
from taskwarren.store import open_store
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import STATES, Job, utc
from taskwarren.text import printable, short_time
from taskwarren.urls import scheme_of

__all__ = ["MAX_LIMIT", "Since", "as_json", "job_table", "jobs_group", "printable",
           "store_url_for", "utc"]

#: The most jobs ``jobs list`` prints (as ``app.jobs.list`` allows).
MAX_LIMIT = 10_000


def as_json(job: Job) -> dict[str, Any]:
    """``job`` as the JSON ``jobs list --json`` and ``jobs show --json`` print."""
    return job.as_json()


class Since(click.ParamType[float]):
    """A duration back from now: ``90s``, ``30m``, ``1h``, ``2d``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        """Seconds in ``value``; a usage error if it is not a positive number and a unit."""
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return since_seconds(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def store_url_for(settings: Settings) -> str:
    """The job store the commands read: ``--store-url``, else ``TASKWARREN_STORE_URL``,
    else the SQLite broker's file when ``TASKWARREN_JOBS`` is on.

    Raises:
        click.ClickException: none is configured, or a SQLite file that does not exist
            (querying it would create an empty one).
    """
    url = settings.store_url
    if url is None and settings.records_jobs:
        url = settings.effective_store_url
    if url is None:
        raise click.ClickException("no job store: set TASKWARREN_STORE_URL or give "
                                   "--store-url (jobs are recorded only in a job store)")
    if scheme_of(url) == "sqlite":
        path = unquote(urlsplit(url).path[1:])
        if path and path != ":memory:" and not os.path.exists(path):
            raise click.ClickException(f"no job store: the SQLite file {printable(path)!r} "
                                       "does not exist")
    return url


@contextlib.contextmanager
def job_table(store_url: str | None) -> Iterator[JobTable]:
    """The jobs table of the configured store; its errors end the command with one line.

    Raises:
        click.ClickException: the store is not configured, cannot be reached, or has no
            jobs table. The store's messages never show the URL's password.
    """
    settings = Settings.from_env(store_url=store_url)
    url = store_url_for(settings)
    table: JobTable | None = None
    try:
        store = open_store(url, settings.connect_timeout_s)
        table = JobTable(store)
        yield table
    except StoreNotInitializedError:
        raise click.ClickException(
            f"the job store at {table.store.location if table else 'that URL'} has no "
            "taskwarren_jobs table: run `taskwarren store init` (it creates the tables "
            "it lacks)") from None
    except (StoreError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if table is not None:
            table.store.close()


_store_option = click.option("--store-url", default=None,
                             help="Default: TASKWARREN_STORE_URL.")


@click.group("jobs")
def jobs_group() -> None:
    """Jobs recorded in the job store (taskwarren_jobs): list, show, cancel, retry.

    Exit status 1 when the store is not configured or cannot be used, for an unknown
    job, a cancel that came too late or a retry refused; 2 for a malformed option.
    """


@jobs_group.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only jobs in this state.")
@click.option("--task", default=None, help="Only jobs of this task (its registered name).")
@click.option("--queue", default=None, help="Only jobs sent to this queue.")
@click.option("--since", type=Since(), default=None,
              help="Only jobs sent this long ago or later: 90s, 30m, 1h, 2d.")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=100, show_default=True,
              help="At most this many jobs, newest first.")
@click.option("--json", "as_json_", is_flag=True, help="Print a JSON list instead of a table.")
@_store_option
def jobs_list(state: str | None, task: str | None, queue: str | None, since: float | None,
              limit: int, as_json_: bool, store_url: str | None) -> None:
    """Jobs matching every filter given, newest first."""
    since_at = time.time() - since if since is not None else None
    with job_table(store_url) as table:
        jobs = table.list(state=state, task=task, queue=queue, since=since_at, limit=limit)
    if as_json_:
        click.echo(json.dumps([as_json(j) for j in jobs]))
        return
    click.echo(f"{'id':36}  {'task':24}  {'queue':16}  {'state':9}  {'try':>3}  "
               f"{'sent (UTC)':19}  {'took s':>8}  error")
    for j in jobs:
        took = "-" if j.duration_s is None else f"{j.duration_s:.3f}"
        click.echo(f"{printable(j.id, 36):36}  {printable(j.task, 24):24}  "
                   f"{printable(j.queue, 16):16}  {printable(j.state, 9):9}  {j.attempt:>3}  "
                   f"{short_time(j.created_at):19}  {took:>8}  "
                   f"{printable(j.error, 60)}".rstrip())
    if len(jobs) == limit:
        click.echo(f"(the newest {limit}; --limit shows more)", err=True)


@jobs_group.command("show")
@click.argument("task_id")
@click.option("--json", "as_json_", is_flag=True, help="Print a JSON object.")
@_store_option
def jobs_show(task_id: str, as_json_: bool, store_url: str | None) -> None:
    """Everything the store knows of job TASK_ID: arguments, state, timings, error."""
    with job_table(store_url) as table:
        job = table.get(task_id)
    if job is None:
        raise click.ClickException(f"no job {printable(task_id, 200)!r} in the store")
    if as_json_:
        click.echo(json.dumps(as_json(job), indent=2))
        return
    took = "-" if job.duration_s is None else f"{job.duration_s:.3f} s"
    for label, value in (("id", job.id), ("task", job.task), ("queue", job.queue),
                         ("state", job.state), ("attempt", job.attempt),
                         ("worker", job.worker or "-"), ("unique key", job.unique_key or "-"),
                         ("sent", short_time(job.created_at)),
                         ("scheduled for", short_time(job.scheduled_at)),
                         ("started", short_time(job.started_at)),
                         ("finished", short_time(job.finished_at)), ("took", took),
                         ("updated", short_time(job.updated_at)),
                         ("arguments", job.args if job.args is not None else "-"),
                         ("error", job.error or "-")):
        click.echo(f"{label + ':':15}{printable(value, 4_000)}")
    if job.traceback:
        click.echo("traceback:")
        click.echo(printable(job.traceback, lines=True))


@jobs_group.command("cancel")
@click.argument("task_id")
@_store_option
def jobs_cancel(task_id: str, store_url: str | None) -> None:
    """Keep job TASK_ID from running: removed from the outbox if not sent yet, else marked
    cancelled (workers check before they run it). Exit 1 if it is running, finished or
    unknown: a running job is not stopped, it is told (through the broker,
    TASKWARREN_URL; the task sees taskwarren.cancel_requested())."""
    with job_table(store_url) as table:
        outcome = table.cancel(task_id)
    # Workers are told through the broker the environment names (none: the store alone
    # holds the cancel, which is the guarantee).
    if (outcome.state == "running" or outcome.done) and os.environ.get("TASKWARREN_URL"):
        app = Warren(settings=Settings.from_env(store_url=store_url))
        try:
            if outcome.done:
                app.jobs.tell_cancelled(task_id, outcome)
            else:
                outcome = app.jobs.tell_running(task_id, outcome)
        finally:
            app.close()
    line = f"{printable(task_id, 200)}: {printable(outcome.how, 300)}"
    if not outcome.done:
        raise click.ClickException(line)
    click.echo(line)


@jobs_group.command("retry")
@click.argument("task_id")
@_store_option
def jobs_retry(task_id: str, store_url: str | None) -> None:
    """Run a dead or cancelled job TASK_ID again: same id, attempt 0.

    It goes through the outbox: a relay (the worker's, or `taskwarren relay`) publishes
    it. Exit 1 if the job is unknown or in any other state.
    """
    with job_table(store_url) as table:
        try:
            job = table.retry(task_id)
        except LookupError as exc:
            raise click.ClickException(printable(exc.args[0] if exc.args else exc, 300)) \
                from None
    click.echo(f"{printable(job.id, 200)}: {job.state} again (attempt {job.attempt}); "
               "the outbox relay publishes it")
