"""``taskwarren queues`` and ``taskwarren purge``: what task queues hold, and emptying one.

``queues`` with names asks the broker about those queues (AMQP passive declares on
RabbitMQ). Without names it lists every taskwarren queue of the vhost from RabbitMQ's
management API (``TASKWARREN_MANAGEMENT_URL``, else the plugin's default port on the
broker's host, if that broker listens on the URL's AMQP port); when that does not
answer, the queues of the tasks modules given with ``-m``. Which source it used is said
on stderr, so ``--json`` stays clean on stdout.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import click

from taskwarren.app import Warren
from taskwarren.brokers.capabilities import Admin, require
from taskwarren.cli_loading import load_app
from taskwarren.management import ManagementAPI, ManagementError, management_url_for
from taskwarren.settings import Settings
from taskwarren.text import printable
from taskwarren.topology import DEAD_SUFFIX, check_queue_name
from taskwarren.urls import AMQP_SCHEMES, parse_urls

__all__ = ["purge_command", "queues_command"]

#: The columns of the ``queues`` table, as the ``--json`` keys.
COLUMNS = ("queue", "ready", "unacked", "consumers", "dead", "delayed")


@click.command("queues")
@click.argument("queue_names", nargs=-1)
@click.option("-m", "--module", "modules", multiple=True, metavar="MODULE",
              help="Tasks module whose queues to show when no names are given and the "
                   "management API does not answer (repeatable).")
@click.option("--url", default=None, help="Broker URL (default: TASKWARREN_URL).")
@click.option("--management-url", default=None,
              help="RabbitMQ management API (default: TASKWARREN_MANAGEMENT_URL, else "
                   "port 15672 of the broker's host with its user and password).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def queues_command(queue_names: tuple[str, ...], modules: tuple[str, ...], url: str | None,
                   management_url: str | None, as_json: bool) -> None:
    """Show ready, unacked, consumers, dead and delayed counts of QUEUE_NAMES.

    Without names: every taskwarren queue, from RabbitMQ's management API when it
    answers, else the queues of the -m modules' tasks. A dash is a figure that source
    cannot tell.
    """
    app = load_app(modules, url) if modules else Warren(settings=Settings.from_env(url=url))
    if queue_names:
        rows = _amqp_rows(app, queue_names)
    else:
        rows, source = _all_rows(app, modules, management_url)
        click.echo(f"source: {source}", err=True)
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{COLUMNS[0]:30} " + " ".join(f"{h:>9}" for h in COLUMNS[1:]))
    for row in rows:
        cells = ("-" if row[c] is None else str(row[c]) for c in COLUMNS[1:])
        click.echo(f"{printable(row['queue']):30} " + " ".join(f"{c:>9}" for c in cells))


def _amqp_rows(app: Warren, queues: Sequence[str]) -> list[dict[str, Any]]:
    admin = require(app.broker, Admin, "queue statistics")
    return [dataclasses.asdict(admin.stats(q)) for q in queues]


def _all_rows(app: Warren, modules: Sequence[str],
              management_url: str | None) -> tuple[list[dict[str, Any]], str]:
    """Every taskwarren queue's row, and a sentence naming where they came from."""
    settings = app.settings
    failure = "the broker is not RabbitMQ, whose management API alone lists every queue"
    if settings.scheme in AMQP_SCHEMES:
        endpoint = parse_urls(settings.url)[0]
        given = management_url or settings.management_url
        api = ManagementAPI(given or management_url_for(endpoint), endpoint.vhost)
        try:
            if not given:
                _check_same_node(api, endpoint.port)
            found = api.task_queues()
        except ManagementError as exc:
            failure = str(exc)
        else:
            rows = [{**dataclasses.asdict(q), "delayed": None} for q in found]
            return rows, (f"every taskwarren queue of vhost {api.vhost!r} from the RabbitMQ "
                          f"management API at {api.location}")
    else:
        app.broker  # noqa: B018 (an unsupported URL scheme fails here, with one line)
    if not modules:
        raise click.ClickException(
            f"cannot list every queue ({failure}): name the queues, or give the tasks "
            "modules with -m MODULE")
    return _amqp_rows(app, app.queues()), (
        f"the queues of {', '.join(modules)} ({failure})")


def _check_same_node(api: ManagementAPI, amqp_port: int) -> None:
    """Refuse a management API found by guessing that serves another broker on the same
    host (one that does not listen on the broker URL's AMQP port).

    Raises:
        ManagementError: it did not answer, or serves another broker.
    """
    ports = api.amqp_ports()
    if amqp_port not in ports:
        raise ManagementError(
            f"management API at {api.location} serves a broker listening on "
            f"{', '.join(map(str, sorted(ports))) or 'no AMQP port'}, not {amqp_port}: "
            "set TASKWARREN_MANAGEMENT_URL")


@click.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Confirm the deletion.")
@click.option("--url", default=None, help="Broker URL (default: TASKWARREN_URL).")
def purge_command(queue: str, yes: bool, url: str | None) -> None:
    """Delete every message waiting in task queue QUEUE, for good; needs --yes.

    Only the ready messages go. Messages being run now, dead letters (`taskwarren dlq
    purge`) and delayed messages (retries waiting out their backoff, sends with a delay:
    on RabbitMQ they wait in delay levels shared by every queue) are kept, and the
    delayed ones arrive in QUEUE when due.
    """
    if queue.endswith(DEAD_SUFFIX):
        raise click.UsageError(f"{printable(queue)} is a dead-letter queue: use `taskwarren "
                               f"dlq purge {printable(queue.removesuffix(DEAD_SUFFIX))} --yes`")
    if queue.startswith("taskwarren."):
        raise click.UsageError(f"{printable(queue)} is taskwarren's own (the delay levels hold "
                               "the delayed messages of every queue): it is never purged")
    check_queue_name(queue)
    if not yes:
        raise click.UsageError(f"purging deletes the messages waiting in {queue} for good: "
                               "add --yes")
    admin = require(Warren(settings=Settings.from_env(url=url)).broker, Admin, "purging")
    admin.stats(queue)  # a task queue has its dead-letter queue: refuses any other queue
    purged = admin.purge(queue)
    left = admin.stats(queue)
    click.echo(f"purged {purged} from {queue}")
    click.echo(f"kept: {_count(left.unacked, 'being run')}, {left.dead} dead "
               f"(`taskwarren dlq purge {queue} --yes`), "
               f"{_count(left.delayed, 'delayed')} (they arrive when due)")


def _count(value: int | None, what: str) -> str:
    return f"{what} (count unknown on this broker)" if value is None else f"{value} {what}"
