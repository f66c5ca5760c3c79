"""``taskwarren schedules``, and the scheduler ``taskwarren worker`` runs beside its pool.

``taskwarren schedules MODULES...`` lists the schedules of the tasks in MODULES with
what the job store knows of each (last tick, next tick, ticks missed), and the store's
schedules that MODULES do not define. Exit codes: 0 listed; 1 the store is not
configured or cannot be used; 2 a malformed option.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import click

from taskwarren.app import Warren
from taskwarren.cli_loading import load_app
from taskwarren.errors import ConfigurationError, StoreError, StoreNotInitializedError
from taskwarren.schedules import check_schedules, list_schedules, run_scheduler
from taskwarren.settings import Settings
from taskwarren.text import printable, short_time


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
    try:
        listed = list_schedules(app, code_given=bool(modules))
    except StoreNotInitializedError:
        raise click.ClickException("the job store has no schedule tables: run `taskwarren "
                                   "store init`") from None
    except (StoreError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([{k: v for k, v in e.items() if not k.startswith("_")}
                               for e in listed], indent=2))
        return
    header = ("NAME", "SCHEDULE", "OVERLAP", "STATUS", "LAST TICK (UTC)", "NEXT TICK (UTC)",
              "MISSED", "LAST JOB")
    lines = [header] + [
        (printable(e["name"], 50), printable(e["schedule"], 70), e["overlap"] or "-",
         e["status"], short_time(e["_last"]), short_time(e["_next"]), str(e["missed"]),
         printable(e["last_job"] or "-", 36)) for e in listed]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
