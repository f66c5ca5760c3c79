"""``taskwarren schedules``, and the scheduler ``taskwarren worker`` runs beside its pool.

``taskwarren schedules MODULES...`` lists the schedules of the tasks in MODULES with
what the job store knows of each (last tick, next tick, ticks missed), and the store's
schedules that MODULES do not define. Exit codes: 0 listed; 1 the store is not
configured or cannot be used; 2 a malformed option.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from taskwarren.app import Warren
from taskwarren.cli_jobs import printable
from taskwarren.cli_loading import load_app
from taskwarren.errors import ConfigurationError, StoreError, StoreNotInitializedError
from taskwarren.schedules import check_schedules, run_scheduler, schedule_specs
from taskwarren.settings import Settings
from taskwarren.store import open_store
from taskwarren.store.schedules import ScheduleRow, ScheduleTable
from taskwarren.urls import scheme_of


def scheduler_sidecars(app: Warren) -> list[Callable[[threading.Event], None]]:
    """The scheduler to run beside a worker pool: none when ``app`` has no schedule.

    Checked here, so that a schedule that cannot run stops ``taskwarren worker`` at start
    with one clear line.

    Raises:
        click.ClickException: the schedules cannot run (no store, no job state where
            overlap is skipped, missing tables).
    """
    try:
        specs = check_schedules(app)
    except StoreNotInitializedError:
        raise click.ClickException(
            "the job store has no schedule tables (taskwarren_schedules): run `taskwarren "
            "store init` (it adds the tables it lacks)") from None
    except (ConfigurationError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    return [lambda stop: run_scheduler(app, stop)] if specs else []


def _time(tick: int | None) -> str:
    return "-" if tick is None else datetime.fromtimestamp(tick, UTC).strftime(
        "%Y-%m-%d %H:%M:%S")


def _iso(tick: int | None) -> str | None:
    return None if tick is None else datetime.fromtimestamp(tick, UTC).isoformat()


@click.command("schedules")
@click.argument("modules", nargs=-1)
@click.option("--url", default=None, help="Broker URL (default: TASKWARREN_URL).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def schedules_command(modules: tuple[str, ...], url: str | None, as_json: bool) -> None:
    """List the schedules of the tasks in MODULES, with their last and next tick.

    STATUS is ``active`` (the store holds this definition), ``new`` (no scheduler has
    run it yet), ``superseded`` (the store holds another definition, from a scheduler
    started later) or ``not in code`` (the store knows it, MODULES do not define it).
    Without MODULES, the store's schedules are listed as ``stored``.
    """
    app = load_app(modules, url) if modules else Warren(settings=Settings.from_env(url=url))
    specs = {s.name: s for s in schedule_specs(app)}
    store_url = app.settings.effective_store_url
    if store_url is None:
        raise click.ClickException("no job store: set TASKWARREN_STORE_URL (schedules "
                                   "live in a job store)")
    if scheme_of(store_url) == "sqlite":
        path = unquote(urlsplit(store_url).path[1:])
        if not os.path.exists(path):  # reading it would create an empty one
            raise click.ClickException(f"no job store: the SQLite file {printable(path)!r} "
                                       "does not exist")
    table: ScheduleTable | None = None
    try:
        table = ScheduleTable(open_store(store_url, app.settings.connect_timeout_s))
        rows = {r.name: r for r in table.rows()}
    except StoreNotInitializedError:
        raise click.ClickException("the job store has no schedule tables: run `taskwarren "
                                   "store init`") from None
    except (StoreError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if table is not None:
            table.store.close()
    listed: list[dict[str, Any]] = []
    for name in sorted(set(specs) | set(rows)):
        spec, row = specs.get(name), rows.get(name)
        listed.append(_entry(name, spec.spec if spec else None,
                             spec.overlap if spec else None, row,
                             spec.next_after if spec else None, bool(modules)))
    if as_json:
        click.echo(json.dumps([{k: v for k, v in e.items() if not k.startswith("_")}
                               for e in listed], indent=2))
        return
    header = ("NAME", "SCHEDULE", "OVERLAP", "STATUS", "LAST TICK (UTC)", "NEXT TICK (UTC)",
              "MISSED", "LAST JOB")
    lines = [header] + [
        (printable(e["name"], 50), printable(e["schedule"], 40), e["overlap"] or "-",
         e["status"], _time(e["_last"]), _time(e["_next"]), str(e["missed"]),
         printable(e["last_job"] or "-", 36)) for e in listed]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


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
    entry: dict[str, Any] = {
        "name": name, "schedule": mine if mine is not None else (row.spec if row else None),
        "stored": row.spec if row else None, "overlap": overlap, "status": status,
        "last_tick": _iso(row.last_tick if row else None), "next_tick": _iso(next_tick),
        "missed": row.missed if row else 0, "last_job": row.last_job if row else None,
        "_last": row.last_tick if row else None, "_next": next_tick}
    return entry
