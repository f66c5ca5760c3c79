"""``taskwarren store init|status`` and ``taskwarren relay [--legacy]``: the job store, by CLI."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import click

from taskwarren.app import Warren
from taskwarren.cli_loading import load_app, log_options
from taskwarren.errors import ConfigurationError, StoreError, StoreNotInitializedError
from taskwarren.relays import legacy_relay_for, relay_for, run_projector, run_relay
from taskwarren.settings import Settings
from taskwarren.store import Store, open_store
from taskwarren.store.job_table import JobTable
from taskwarren.store.legacy import LegacyTable
from taskwarren.store.schema import Dialect, ddl
from taskwarren.urls import scheme_of

_DIALECTS: dict[str, Dialect] = {"sqlite": "sqlite", "postgresql": "postgresql",
                                 "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


def _store_url(store_url: str | None) -> str:
    settings = Settings.from_env(store_url=store_url)
    url = settings.effective_store_url
    if url is None:
        raise ConfigurationError("no job store: set TASKWARREN_STORE_URL or give --store-url "
                                 "(postgresql://, mysql:// or sqlite:///)")
    return url


@click.group("store")
def store_group() -> None:
    """The job store: taskwarren's tables in your database (TASKWARREN_STORE_URL)."""


@store_group.command("init")
@click.option("--store-url", default=None, help="Default: TASKWARREN_STORE_URL.")
@click.option("--sql", "print_sql", is_flag=True,
              help="Print the DDL for the URL's database instead of running it.")
def store_init(store_url: str | None, print_sql: bool) -> None:
    """Create taskwarren's tables (idempotent: existing ones are left alone)."""
    url = _store_url(store_url)
    if print_sql:
        for statement in ddl(_DIALECTS[scheme_of(url)]):
            click.echo(statement + ";\n")
        return
    store = _open(url)
    try:
        store.init()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"taskwarren's tables are ready in {store.location}")


@store_group.command("status")
@click.option("--store-url", default=None, help="Default: TASKWARREN_STORE_URL.")
def store_status(store_url: str | None) -> None:
    """Rows waiting in the outbox, and rows the relay rejected."""
    store = _open(_store_url(store_url))
    try:
        waiting, rejected = store.counts()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"outbox: {waiting} waiting, {rejected} rejected "
               "(see taskwarren_outbox_rejected.reason)")


@click.command("relay")
@click.option("--url", default=None, help="Broker URL (default: TASKWARREN_URL).")
@click.option("--store-url", default=None, help="Default: TASKWARREN_STORE_URL.")
@click.option("--legacy", "legacy", default=None, metavar="MODULE:NAME",
              help="Relay your own jobs table instead of the outbox: the LegacyTable "
                   "MODULE:NAME names (MODULE's import registers the tasks).")
@log_options
def relay_command(url: str | None, store_url: str | None, legacy: str | None) -> None:
    """Publish committed outbox rows to the broker until stopped (SIGTERM or Ctrl-C).

    With --legacy, publish the pending rows of your own jobs table instead, then set
    their status; run one such relay per table, beside the outbox's own.
    """
    table: LegacyTable | None = None
    if legacy is None:
        app = Warren(url=url, store_url=store_url)
    else:
        table, app = _load_legacy(legacy, url)
        if store_url:
            app.settings = app.settings.replace(store_url=store_url)
    try:
        relay = relay_for(app) if table is None else legacy_relay_for(app, table)
    except (StoreError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"relaying {relay.store.location} -> {app.broker_location}", err=True)
    try:
        relay.run(stop)
    finally:
        relay.store.close()
        app.close()


def _load_legacy(spec: str, url: str | None) -> tuple[LegacyTable, Warren]:
    """The :class:`LegacyTable` ``spec`` names, and the app of the tasks its module loads."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise click.BadParameter(f"{spec!r}: give module:name, e.g. myapp.migration:JOBS",
                                 param_hint="--legacy")
    app = load_app([module], url)
    table = getattr(sys.modules[module], name, None)
    if not isinstance(table, LegacyTable):
        raise click.BadParameter(f"{spec!r} is not a taskwarren.store.legacy.LegacyTable",
                                 param_hint="--legacy")
    return table, app


def relay_sidecars(app: Warren) -> list[Callable[[threading.Event], None]]:
    """The relay (and, when the app records jobs, the projector) to run beside a worker
    pool: none without a job store.

    The store is checked here, before the pool starts, so that a missing table or an
    unreachable database stops ``taskwarren worker`` with one clear line.

    Raises:
        click.ClickException: the store cannot be used.
    """
    if app.settings.effective_store_url is None:
        return []
    try:
        relay_for(app).store.close()
        if app.settings.records_jobs:
            _check_jobs_table(app)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    sidecars = [lambda stop: run_relay(app, stop)]
    if app.settings.records_jobs:
        sidecars.append(lambda stop: run_projector(app, stop))
    return sidecars


def _check_jobs_table(app: Warren) -> None:
    """Fail with the fix if jobs are recorded but the store predates ``taskwarren_jobs``
    (else every start would fail to be recorded, and no cancel would be checked)."""
    url = app.settings.effective_store_url
    assert url is not None
    table = JobTable(open_store(url, app.settings.connect_timeout_s))
    try:
        table.check()
    except StoreNotInitializedError:
        raise click.ClickException(
            f"the job store at {table.store.location} has no taskwarren_jobs table, and "
            "jobs are recorded (TASKWARREN_JOBS, on when TASKWARREN_STORE_URL is set): run "
            "`taskwarren store init` (it adds the tables it lacks) or set "
            "TASKWARREN_JOBS=off") from None
    finally:
        table.store.close()


def _open(url: str) -> Store:
    try:
        return open_store(url)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
