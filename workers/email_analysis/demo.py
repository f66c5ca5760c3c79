"""End-to-end demo: generate mail, queue it, run a worker pool, report throughput.

``run_demo`` does what an operator would do by hand:

1. generate ``n`` messages (in memory);
2. start the SMTP ingress (:mod:`.ingress`) on a free local port, writing into
   ``WORKDIR/maildir`` and the results store ``WORKDIR/email_analysis.db``, which also
   holds taskwarren's outbox and jobs table;
3. start ``python -m taskwarren worker workers.email_analysis.tasks -c C`` as a
   subprocess (its relay publishes what the ingress queued), and deliver every message
   to the ingress with ``smtplib`` from a few sessions at once, as a mail server would
   (again after a 451);
4. watch the results store fill up (a progress bar on a terminal, plain
   lines otherwise) until every message is stored or dead-lettered, or
   nothing moves for ``stall_timeout`` seconds;
5. stop the pool with SIGTERM, wait for exit code 0, and print messages,
   seconds, messages/s, score distribution, top sender domains, and broken
   and failed counts.

``demo_command`` is the same as a click command: ``taskwarren demo``, which the
CLI finds through this distribution's ``taskwarren.commands`` entry point
(workers/pyproject.toml).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from taskwarren.brokers.capabilities import Admin, require
from taskwarren.errors import TaskwarrenError

from .generate import generate_messages
from .ingress import Ingress, IngressConfig
from .intake import Intake
from .store import SQLiteStore, StoreSummary

__all__ = [
    "Delivery",
    "DemoSummary",
    "deliver_all",
    "demo_command",
    "format_summary",
    "run_demo",
]

TASKS_MODULE = "workers.email_analysis.tasks"
QUEUES = ("email.ingest", "email.store")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DemoSummary:
    """What one demo run measured.

    ``seconds`` runs from the first SMTP delivery to the last result stored,
    so it includes delivering and the pool's start-up; ``sent`` counts the messages
    the ingress accepted (250); ``failed`` is every sent
    message without a stored result (``dead_lettered`` of them are known to be
    in a dead-letter queue, where the broker can tell).
    """

    messages: int
    sent: int
    stored: int
    failed: int
    dead_lettered: int | None
    broken: int
    seconds: float
    messages_per_second: float
    generate_seconds: float
    send_seconds: float
    worker_exit_code: int | None
    broker: str
    results_db: str
    workdir: Path
    summary: StoreSummary = field(default_factory=StoreSummary)

    @property
    def ok(self) -> bool:
        """Everything stored and the pool stopped cleanly."""
        return self.failed == 0 and self.worker_exit_code == 0


def _clean_workdir(workdir: Path, paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)


@dataclass
class _QueueState:
    dead: dict[str, int]  # messages in each queue's dead-letter queue
    drained: bool  # nothing ready or in flight in any of the queues


def _queue_state(broker: object) -> _QueueState | None:
    """Dead-letter counts and whether the queues are empty, or None if the broker cannot say."""
    try:
        admin = require(broker, Admin, "queue statistics")
        stats = [admin.stats(q) for q in QUEUES]
    except (TaskwarrenError, OSError):
        return None
    return _QueueState(
        dead={s.queue: int(s.dead) for s in stats},
        drained=all(s.ready == 0 and not s.unacked for s in stats),
    )


def _new_dead(before: _QueueState, now: _QueueState) -> int:
    return sum(now.dead.get(q, 0) - before.dead.get(q, 0) for q in QUEUES)


def _worker_env(url: str, db: str, maildir: str, store_url: str | None = None,
                ) -> dict[str, str]:
    env = dict(os.environ)
    env["TASKWARREN_URL"] = url
    if store_url is not None:  # the outbox the ingress writes is in the results store
        env["TASKWARREN_STORE_URL"] = store_url
    env["EMAIL_ANALYSIS_DB"] = db
    env["EMAIL_ANALYSIS_MAILDIR"] = maildir
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class _Progress:
    """A click progress bar on a terminal, a line every ~10% otherwise, or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self._tty = enabled and sys.stdout.isatty()
        self._bar: Any = None
        self._next_line = 0
        if self._tty:
            self._bar = click.progressbar(length=total, label="analysing", show_pos=True)
            self._bar.__enter__()

    def update(self, done: int, elapsed: float) -> None:
        done = min(done, self.total)
        if not self.enabled or done <= self.done:
            return
        if self._bar is not None:
            self._bar.update(done - self.done)
        else:
            while done >= self._next_line and self._next_line <= self.total:
                rate = done / elapsed if elapsed > 0 else 0.0
                click.echo(f"  {done}/{self.total} stored ({elapsed:.1f}s, {rate:.0f} msg/s)")
                self._next_line += max(1, self.total // 10)
        self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def run_demo(
    n: int = 2000,
    concurrency: int = 2,
    url: str | None = None,
    workdir: Path | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    stall_timeout: float = 60.0,
    stop_timeout: float = 60.0,
    echo: Callable[[str], None] = click.echo,
) -> DemoSummary:
    """Run the pipeline end to end on ``n`` generated messages; print and return the figures.

    Args:
        n: messages to generate and process.
        concurrency: worker processes (``-c``).
        url: broker URL; default ``TASKWARREN_URL``, else an embedded SQLite broker
            at ``WORKDIR/taskwarren.db``.
        workdir: where the Maildir, the results database and ``worker.log`` go
            (default: a new temporary directory). Earlier demo files there are replaced.
        progress: show progress while waiting.
        seed: generator seed.
        stall_timeout: give up waiting when no result arrives for this long.
        stop_timeout: how long the pool may take to stop after SIGTERM.
        echo: where the report lines go.
    """
    from taskwarren.app import Warren
    from taskwarren.settings import mask_url

    workdir = Path(workdir or tempfile.mkdtemp(prefix="taskwarren-demo-")).resolve()
    maildir = workdir / "maildir"
    db_path = workdir / "email_analysis.db"
    db_url = f"sqlite:///{db_path}"
    broker_url = url or os.environ.get("TASKWARREN_URL") or f"sqlite:///{workdir / 'taskwarren.db'}"
    embedded = broker_url.startswith("sqlite:") and not (url or os.environ.get("TASKWARREN_URL"))
    _clean_workdir(workdir, [maildir, db_path, *([workdir / "taskwarren.db"] if embedded else [])])

    echo(f"demo: {n} messages, {concurrency} worker processes, broker {mask_url(broker_url)}")
    echo(f"demo: work directory {workdir}")
    started = time.perf_counter()
    # On the wire as a mail server sends them: CRLF line ends.
    wire = [re.sub(rb"\r?\n", b"\r\n", m.raw) for m in generate_messages(n, seed=seed)]
    generate_seconds = time.perf_counter() - started

    results = SQLiteStore(db_path)
    sender = Warren(broker_url)
    sender.declare(list(QUEUES))
    before = _queue_state(sender.broker)
    intake = Intake(db_url, Warren(broker_url, store_url=db_url, jobs=True))
    # aiosmtpd logs every SMTP command at INFO ("mail.log"): thousands of lines that
    # would bury the demo's own output. Its warnings and errors still show.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    ingress = Ingress(IngressConfig(port=0, maildir=maildir), intake)
    ingress.start()
    echo(f"demo: ingress listening on 127.0.0.1:{ingress.port} (SMTP), results in {db_path}")

    log_path = workdir / "worker.log"
    command = [sys.executable, "-m", "taskwarren", "worker", TASKS_MODULE, "-c", str(concurrency)]
    bar = _Progress(n, progress)
    stored = 0
    state = before
    exit_code: int | None = None
    log: IO[bytes]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            env=_worker_env(broker_url, str(db_path), str(maildir), store_url=db_url),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        since = time.time()
        t0 = time.perf_counter()
        finished_at = t0
        try:
            try:
                delivery = deliver_all(ingress.port, wire, SENDERS)
            finally:
                ingress.stop()
            sent = delivery.accepted
            send_seconds = time.perf_counter() - t0
            echo(f"demo: {sent} messages accepted over SMTP in {send_seconds:.2f}s "
                 f"({delivery.deferred} answered 451 and sent again)")
            last_change = time.perf_counter()
            last_check = 0.0
            while True:
                now = time.perf_counter()
                count = results.count(since=since)
                if count != stored:
                    stored, last_change, finished_at = count, now, now
                bar.update(stored, now - t0)
                if stored >= sent:
                    break
                if before is not None and now - last_check >= 1.0:
                    # Dead letters are final: once the queues are empty, nothing more comes.
                    last_check = now
                    state = _queue_state(sender.broker)
                    if (
                        state is not None
                        and state.drained
                        and stored + _new_dead(before, state) >= sent
                    ):
                        break
                if proc.poll() is not None:
                    echo(f"demo: the worker pool exited early with code {proc.returncode}")
                    break
                if now - last_change > stall_timeout:
                    echo(f"demo: no progress for {stall_timeout:.0f}s; stopping")
                    break
                time.sleep(0.2)
        finally:
            bar.close()
            exit_code = _stop(proc, stop_timeout)
    stored = results.count(since=since)
    overview = results.summary(since=since)
    results.close()
    state = _queue_state(sender.broker) if before is not None else None
    sender.close()
    dead = _new_dead(before, state) if before is not None and state is not None else None
    seconds = max(finished_at - t0, 1e-9)
    summary = DemoSummary(
        messages=n,
        sent=sent,
        stored=stored,
        failed=max(sent - stored, 0),
        dead_lettered=dead,
        broken=overview.broken,
        seconds=seconds,
        messages_per_second=stored / seconds,
        generate_seconds=generate_seconds,
        send_seconds=send_seconds,
        worker_exit_code=exit_code,
        broker=mask_url(broker_url),
        results_db=str(db_path),
        workdir=workdir,
        summary=overview,
    )
    for line in format_summary(summary).splitlines():
        echo(line)
    if exit_code != 0:
        echo(f"demo: worker pool exit code {exit_code}; see {log_path}")
    return summary


def format_summary(summary: DemoSummary) -> str:
    """The human-readable report of a demo run."""
    s = summary.summary
    dead = "unknown" if summary.dead_lettered is None else str(summary.dead_lettered)
    lines = [
        "",
        f"messages        {summary.messages} (sent {summary.sent}, stored {summary.stored})",
        (
            f"seconds         {summary.seconds:.2f} (from first send to last result; "
            f"generating took {summary.generate_seconds:.2f}, sending {summary.send_seconds:.2f})"
        ),
        f"messages/s      {summary.messages_per_second:.1f}",
        f"broken          {summary.broken} (analysed and marked)",
        f"failed          {summary.failed} not stored ({dead} dead-lettered)",
        f"mean score      {s.mean_score:.1f}",
        "score distribution:",
    ]
    peak = max(s.score_histogram.values(), default=0) or 1
    for bucket, n in s.score_histogram.items():
        lines.append(f"  {bucket:>6}  {n:6d}  {'#' * round(40 * n / peak)}")
    lines.append("top sender domains:")
    for domain, n in s.top_sender_domains:
        lines.append(f"  {n:6d}  {domain}")
    lines.append(f"worker exit code {summary.worker_exit_code}")
    return "\n".join(lines)


#: SMTP client sessions the demo delivers through at once.
SENDERS = 4


@dataclass
class Delivery:
    """What the demo's SMTP clients saw."""

    accepted: int = 0
    deferred: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _deliver_batch(port: int, batch: list[bytes], tally: Delivery) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        for data in batch:
            while True:
                refused = False
                try:
                    client.sendmail("demo@example.net", ["analysis@example.net"], data)
                except smtplib.SMTPDataError as exc:
                    if exc.smtp_code != 451:
                        raise
                    refused = True
                with tally.lock:
                    if refused:
                        tally.deferred += 1
                    else:
                        tally.accepted += 1
                if not refused:
                    break
                time.sleep(0.2)  # as a mail server does, only sooner


def deliver_all(port: int, messages: list[bytes], senders: int = SENDERS) -> Delivery:
    """Send ``messages`` to the ingress on ``port`` from ``senders`` SMTP sessions at
    once, each message again after a 451 until it is accepted."""
    tally = Delivery()
    threads = [threading.Thread(target=_deliver_batch, args=(port, messages[i::senders], tally),
                                name=f"demo-smtp-{i}") for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


@click.command("demo")
@click.option(
    "-n",
    "--messages",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Messages to generate and analyse.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "--url",
    default=None,
    help="Broker URL (default: TASKWARREN_URL, else an embedded SQLite broker in WORKDIR).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the Maildir, results and worker log (default: a new temporary one).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed.")
def demo_command(
    messages: int, concurrency: int, url: str | None, workdir: Path | None, seed: int
) -> None:
    """Analyse generated email end to end through a worker pool, and report throughput."""
    summary = run_demo(messages, concurrency, url, workdir, progress=True, seed=seed)
    if not summary.ok:
        raise SystemExit(1)
