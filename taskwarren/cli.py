"""The ``taskwarren`` command: worker, send, queues, purge, dlq, topology, store, jobs, web,
and installed commands.

Other distributions add subcommands (the email pipeline adds ``demo``): see
:mod:`taskwarren.commands`.

Exit codes: 0 done; 1 an error, told in one line on stderr (``--debug`` shows the
traceback instead); 2 a malformed command line (click's usage error).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any

import click

from taskwarren import __version__
from taskwarren.app import Warren
from taskwarren.brokers.capabilities import Admin, Topology, require
from taskwarren.cli_jobs import jobs_group
from taskwarren.cli_loading import load_app, load_middleware, log_options
from taskwarren.cli_queues import purge_command, queues_command
from taskwarren.cli_schedules import scheduler_sidecars, schedules_command
from taskwarren.cli_store import relay_command, store_group
from taskwarren.cli_topology import MIGRATE as _MIGRATE
from taskwarren.cli_topology import print_topology as _print_topology
from taskwarren.cli_web import web_command
from taskwarren.commands import CommandGroup
from taskwarren.errors import TaskwarrenError
from taskwarren.message import H_REASON, Envelope, decode_kwargs, failure_summary
from taskwarren.pools import live_pools
from taskwarren.settings import Settings
from taskwarren.text import printable
from taskwarren.worker.aio import DEFAULT_ASYNC_CONCURRENCY


class _Commands(CommandGroup):
    """The command group; an error ends a command with one line, not a traceback
    (unless ``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(error_line(exc)) from None


def error_line(exc: Exception) -> str:
    """``exc`` as the one line a command ends with.

    Our errors say what went wrong in their message (and never show a password); any
    other is named by its type, and points to ``--debug``. Control characters are
    escaped: a message may quote what came from a broker or a message.
    """
    if isinstance(exc, TaskwarrenError):
        return printable(exc)
    return f"{printable(f'{type(exc).__name__}: {exc}')} (--debug shows the traceback)"


@click.group(cls=_Commands)
@click.version_option(__version__, "--version", "-V", prog_name="taskwarren",
                      message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True,
              help="Show the traceback of an error instead of one line.")
@log_options
def main(debug: bool) -> None:
    """taskwarren: a durable task queue for Python on RabbitMQ."""


@main.command()
@click.argument("modules", nargs=-1, required=True)
@click.option("-c", "--concurrency", type=int, default=None,
              help="Child processes (default: CPU count).")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default: all used).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="Executor threads per child.")
@click.option("--async-concurrency", type=click.IntRange(min=1),
              default=DEFAULT_ASYNC_CONCURRENCY, show_default=True,
              help="async def tasks each child runs at once on its event loop.")
@click.option("--prefetch", type=int, default=None,
              help="Pin the per-consumer prefetch (default: adapts to task durations).")
@click.option("--url", default=None, help="Broker URL (default: TASKWARREN_URL).")
@click.option("--grace", type=float, default=None, help="Seconds running tasks get on stop.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus /metrics and /healthz for the whole pool on this port.")
@click.option("--middleware", "middleware", multiple=True, metavar="MODULE:NAME",
              help="Add this middleware (instance, or class made with no arguments); "
                   "repeatable, run in the order given.")
@click.option("--relay/--no-relay", default=True, show_default=True,
              help="Run the outbox relay beside the pool when a job store is configured.")
@click.option("--scheduler/--no-scheduler", default=True, show_default=True,
              help="Run the scheduler beside the pool when tasks have cron= or every=.")
@log_options
def worker(modules: tuple[str, ...], concurrency: int | None, queues: str | None,
           threads: int, async_concurrency: int, prefetch: int | None, url: str | None,
           grace: float | None, metrics_port: int | None, middleware: tuple[str, ...],
           relay: bool, scheduler: bool) -> None:
    """Run a pool of worker processes for the tasks in MODULES."""
    from taskwarren.cli_store import relay_sidecars
    from taskwarren.worker.supervisor import Supervisor

    metrics_dir = None
    if metrics_port is not None:
        # Before anything imports prometheus_client: it picks its storage at import.
        metrics_dir = tempfile.mkdtemp(prefix="taskwarren-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    app = load_app(modules, url)
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else app.queues()
    for spec in middleware:
        app.add_middleware(load_middleware(spec))
    if metrics_port is not None:
        from taskwarren.middleware.metrics import PrometheusMetrics

        app.add_middleware(PrometheusMetrics(app))
    pool = Supervisor(app, chosen, concurrency or os.cpu_count() or 1, threads,
                      prefetch or app.settings.prefetch, grace, metrics_port=metrics_port,
                      sidecars=[*(relay_sidecars(app) if relay else ()),
                                *(scheduler_sidecars(app) if scheduler else ())],
                      async_concurrency=async_concurrency)
    try:
        code = pool.run()
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(code)


@main.command()
@click.option("--port", type=int, default=9808, show_default=True,
              help="The pool's --metrics-port.")
@click.option("--timeout", type=float, default=5.0, show_default=True)
def health(port: int, timeout: float) -> None:
    """Exit 0 if the local worker pool answers and every child is responsive."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            click.echo(r.read().decode())
    except urllib.error.HTTPError as exc:
        click.echo(exc.read().decode(), err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"no worker pool answers on port {port}: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.argument("task_name")
@click.option("--module", "-m", "modules", multiple=True, required=True,
              help="Module(s) defining the task.")
@click.option("--kwargs", "kwargs_json", default=None, help="Keyword arguments as JSON.")
@click.option("--file", "jobs_file", type=click.File(), default=None,
              help="JSON lines file, one kwargs object per line.")
@click.option("--delay", type=float, default=None, help="Seconds before the task may run.")
@click.option("--url", default=None)
def send(task_name: str, modules: tuple[str, ...], kwargs_json: str | None,
         jobs_file: Any, delay: float | None, url: str | None) -> None:
    """Send TASK_NAME with --kwargs or every line of --file; prints task ids."""
    app = load_app(modules, url)
    task = app.tasks.get(task_name) or next(
        (t for t in app.tasks.values() if t.name.endswith("." + task_name)), None)
    if task is None:
        raise click.UsageError(f"no task {task_name!r}; known: {', '.join(sorted(app.tasks))}")
    calls = _read_calls(jobs_file) if jobs_file else [_json_arg(kwargs_json or "{}", "--kwargs")]
    bound = task.options(delay=delay)
    chunks = [calls[i:i + SEND_CHUNK] for i in range(0, len(calls), SEND_CHUNK)]
    ids: list[str] = []
    # A bar on a terminal (stderr, so the ids on stdout stay clean for pipes).
    with click.progressbar(length=len(calls), label="sending", file=sys.stderr,
                           hidden=not sys.stderr.isatty()) as bar:
        for chunk in chunks:
            ids += bound.send_many(chunk)
            bar.update(len(chunk))
    click.echo("\n".join(ids))


def _json_arg(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=where) from None


def _read_calls(jobs_file: Any) -> list[Any]:
    return [_json_arg(line, f"--file line {n}")
            for n, line in enumerate(jobs_file, start=1) if line.strip()]


#: Calls per confirmed batch when sending a file of jobs.
SEND_CHUNK = 1000


def _broker_app(url: str | None) -> Warren:
    return Warren(settings=Settings.from_env(url=url))


@main.command()
@click.option("--url", default=None)
@click.option("--listen", type=float, default=2.5, show_default=True,
              help="Seconds to listen for announcements (pools announce every second).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def workers(url: str | None, listen: float, as_json: bool) -> None:
    """Live worker pools, discovered through the broker: host, pid, children, queues."""
    rows = live_pools(_broker_app(url).broker, listen)
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'host':20} {'pid':>8} {'children':>8} {'in flight':>9} {'uptime s':>9}  queues")
    for r in rows:
        click.echo(f"{r['host']:20} {r['pid']:>8} {r['children']:>8} {r['in_flight']:>9} "
                   f"{r['uptime_s']:>9}  {','.join(r['queues'])}")


def _admin(url: str | None) -> Admin:
    return require(_broker_app(url).broker, Admin, "dead-letter handling")


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@click.argument("queue")
@click.option("--url", default=None)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list (errors in full) instead of tab-separated lines.")
def dlq_list(queue: str, url: str | None, as_json: bool) -> None:
    """List QUEUE's dead letters (they stay where they are)."""
    found = _admin(url).dead_letters(queue)
    if as_json:
        click.echo(json.dumps([_dead_letter_json(env) for env in found], default=str))
        return
    for env in found:
        error_type, error, failed_at = failure_summary(env)
        click.echo("\t".join(str(x) for x in (
            env.message_id, env.task, env.attempt, error_type,
            error.replace("\n", " ")[:120], failed_at)))


def _dead_letter_json(env: Envelope) -> dict[str, Any]:
    error_type, error, failed_at = failure_summary(env)
    return {"id": env.message_id, "task": env.task, "attempt": env.attempt,
            "error_type": error_type, "error": error, "failed_at": failed_at or None,
            "reason": env.headers.get(H_REASON)}


@dlq.command("show")
@click.argument("queue")
@click.argument("task_id")
@click.option("--url", default=None)
def dlq_show(queue: str, task_id: str, url: str | None) -> None:
    """Show everything about one dead letter, traceback and arguments included."""
    for env in _admin(url).dead_letters(queue):
        if env.message_id == task_id:
            try:
                arguments: Any = decode_kwargs(env, sys.maxsize)
            except TaskwarrenError:
                arguments = env.body.decode(errors="replace")
            click.echo(json.dumps({
                "id": env.message_id, "task": env.task, "attempt": env.attempt,
                "reason": env.headers.get(H_REASON), "headers": env.headers,
                "arguments": arguments,
            }, indent=2, default=str))
            return
    raise click.ClickException(f"no dead letter {task_id} in {queue}")


@dlq.command("replay")
@click.argument("queue")
@click.option("--id", "ids", multiple=True, help="Task id to replay (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--url", default=None)
def dlq_replay(queue: str, ids: tuple[str, ...], replay_all: bool, url: str | None) -> None:
    """Send dead letters back to QUEUE with their attempts reset."""
    if not ids and not replay_all:
        raise click.UsageError("give --id ID (repeatable) or --all")
    n = _admin(url).replay_dead(queue, None if replay_all else list(ids))
    click.echo(f"replayed {n}")


@dlq.command("purge")
@click.argument("queue")
@click.option("--id", "ids", multiple=True)
@click.option("--yes", is_flag=True, help="Confirm the deletion.")
@click.option("--url", default=None)
def dlq_purge(queue: str, ids: tuple[str, ...], yes: bool, url: str | None) -> None:
    """Delete dead letters of QUEUE (all, or --id ones); needs --yes."""
    if not yes:
        raise click.UsageError("purging deletes messages for good: add --yes")
    n = _admin(url).purge_dead(queue, list(ids) if ids else None)
    click.echo(f"purged {n}")


@main.group()
def topology() -> None:
    """Compare the exchanges, queues and bindings the tasks need with the broker's."""


@topology.command("plan")
@click.argument("modules", nargs=-1, required=True)
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default: all used).")
@click.option("--url", default=None)
def topology_plan(modules: tuple[str, ...], queues: str | None, url: str | None) -> None:
    """Print what MODULES' tasks need and what the broker has; changes nothing.

    Existence is checked with passive declares. Arguments of an existing queue are
    checked by declaring it with ours on a throwaway channel: the broker refuses
    (PRECONDITION_FAILED) when they differ and changes nothing either way. Bindings
    cannot be read over AMQP; `apply` makes them (binding twice is harmless).
    """
    app = load_app(modules, url)
    items = app.topology(_chosen(app, queues))
    try:
        statuses = require(app.broker, Topology, "topology inspection").check_topology(items)
    except TaskwarrenError as exc:
        raise click.ClickException(str(exc)) from None
    _print_topology(items, statuses)
    missing = sum(s == "missing" for s in statuses)
    differs = sum(s.startswith("differs") for s in statuses)
    if "unknown" in statuses:
        click.echo("unknown: bindings cannot be read over AMQP; `apply` makes them "
                   "(binding twice changes nothing)")
    click.echo(f"{missing} missing, {differs} differ"
               + ("; run `taskwarren topology apply` to create what is missing" if missing
                  else ""))
    if differs:
        click.echo(_MIGRATE)


@topology.command("apply")
@click.argument("modules", nargs=-1, required=True)
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default: all used).")
@click.option("--url", default=None)
def topology_apply(modules: tuple[str, ...], queues: str | None, url: str | None) -> None:
    """Create what MODULES' tasks need and the broker lacks; never delete or redeclare.

    Exits 1 when something exists with other arguments (it is left alone).
    """
    app = load_app(modules, url)
    items = app.topology(_chosen(app, queues))
    try:
        statuses = require(app.broker, Topology, "topology changes").apply_topology(items)
    except TaskwarrenError as exc:
        raise click.ClickException(str(exc)) from None
    _print_topology(items, statuses)
    created = sum(s == "created" for s in statuses)
    differs = sum(s.startswith(("differs", "skipped")) for s in statuses)
    click.echo(f"{created} created, {differs} left alone")
    if differs:
        click.echo(_MIGRATE)
        sys.exit(1)


def _chosen(app: Warren, queues: str | None) -> list[str]:
    return [q.strip() for q in queues.split(",") if q.strip()] if queues else app.queues()


main.add_command(queues_command)
main.add_command(purge_command)
main.add_command(store_group)
main.add_command(jobs_group)
main.add_command(relay_command)
main.add_command(schedules_command)
main.add_command(web_command)
