#!/usr/bin/env python
"""The email ingress measured (issue 17): accepts per second, accept -> analysed, and
where an accept's time goes.

Per configuration (``embedded``: SQLite broker and SQLite results store; ``rabbitmq-
mariadb``: a private RabbitMQ node of this script's own and a fresh MariaDB database):

* ``accept``: ``--n`` (2,000) generated messages from 8 smtplib sessions at once to
  ``taskwarren-email ingress`` (a process of its own), no worker running (the outbox
  bound is lifted for this phase): accepted messages per second at the ingress alone.
* ``paced``: the pipeline again at ``--paced-rate`` (10) messages/s for ``--paced-s``
  (20) s, below what it can analyse: accept -> analysed latency without a backlog.
* ``pipeline``: the same with ``taskwarren worker workers.email_analysis.tasks -c 2``
  running (relay and projector beside it): accepted messages/s while the pool analyses,
  the rate to the last result stored, and accept -> analysed latency per message
  (``email_ingress.accepted_at`` -> ``email_analysis.stored_at``), p50 and p99.
* ``parts``: one thread, ``--parts-n`` (300) messages, each step alone: the Maildir
  write (write, fsync, rename, fsync of ``new/``), the store transaction
  (:meth:`Intake.accept`: outbox lag check, record, outbox row and job row, commit), the
  key (SHA-256 of the message), and an SMTP round trip to an aiosmtpd server whose
  handler answers 250 at once (the protocol's own cost), with 1 and 8 client sessions.

Usage: ``python benchmarks/ingress.py [--n 2000] [--configs embedded,rabbitmq-mariadb]
[--out results.jsonl]``. Prints a table; JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from taskwarren import Warren  # noqa: E402
from workers.email_analysis.generate import generate_messages  # noqa: E402
from workers.email_analysis.intake import Intake, identify  # noqa: E402
from workers.email_analysis.maildir import Maildir  # noqa: E402

CLIENTS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wire(n: int, seed: int = 42) -> list[bytes]:
    """``n`` generated messages as a mail server sends them (CRLF); each phase has its
    own seed, so no message of one phase is a duplicate of another's."""
    return [re.sub(rb"\r?\n", b"\r\n", m.raw) for m in generate_messages(n, seed=seed)]


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the ingress exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError("the ingress did not listen")


def _env(broker: str, db: str, maildir: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TASKWARREN_URL": broker,
           "TASKWARREN_STORE_URL": db, "EMAIL_ANALYSIS_DB": db,
           "EMAIL_ANALYSIS_MAILDIR": str(maildir)}
    return env


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=out, stderr=out,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _send_all(port: int, messages: list[bytes], clients: int = CLIENTS,
              rate: float | None = None) -> tuple[float, int]:
    """Deliver from ``clients`` sessions at once (again after a 451), at most ``rate``
    messages/s in all if given; (seconds, 451s)."""
    deferred = [0]
    lock = threading.Lock()

    def run(batch: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            for k, data in enumerate(batch):
                if rate is not None:  # paced: message k of this client is due at k/share
                    due = started + k * clients / rate
                    time.sleep(max(0.0, due - time.perf_counter()))
                while True:
                    try:
                        client.sendmail("bench@example.net", ["analysis@example.net"], data)
                        break
                    except smtplib.SMTPDataError as exc:
                        if exc.smtp_code != 451:
                            raise
                        with lock:
                            deferred[0] += 1
                        time.sleep(0.1)

    threads = [threading.Thread(target=run, args=(messages[i::clients],))
               for i in range(clients)]
    started = time.perf_counter() + 0.01
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, deferred[0]


def _rows(db: str, sql: str) -> list[tuple[Any, ...]]:
    if db.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(db.removeprefix("sqlite:///"), timeout=30)) as c:
            return c.execute(sql).fetchall()
    from taskwarren.store import open_store

    store = open_store(db)
    try:
        with store.cursor() as cur:
            cur.execute(sql)
            rows = list(cur.fetchall())
            store.connection().commit()
        return rows
    finally:
        store.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_config(name: str, broker: str, db: str, n: int, work: Path, paced_rate: float,
               paced_s: float) -> dict[str, Any]:
    """The ``accept``, ``pipeline`` and ``paced`` phases on one broker and store."""
    out: dict[str, Any] = {"config": name, "n": n}
    messages = _wire(n)
    # accept: the ingress alone.
    for phase, with_pool, rate in (("accept", False, None), ("pipeline", True, None),
                                   ("paced", True, paced_rate)):
        if phase == "paced":
            messages = _wire(int(paced_rate * paced_s), seed=43)
            n = len(messages)
        work.mkdir(parents=True, exist_ok=True)
        maildir = work / f"{phase}-maildir"
        env = _env(broker, db, maildir)
        if with_pool:
            _rows_clear(db)
        port = _free_port()
        ingress = [sys.executable, "-m", "workers.email_analysis.cli", "ingress", "--listen",
                   f"127.0.0.1:{port}", "--maildir", str(maildir), "--db", db,
                   "--max-outbox-age", "5" if with_pool else "3600"]
        pool_argv = [sys.executable, "-m", "taskwarren", "worker",
                     "workers.email_analysis.tasks", "-c", "2"]
        with contextlib.ExitStack() as stack:
            proc = stack.enter_context(_process(ingress, env, work / f"{phase}-ingress.log"))
            _wait_port(port, proc)
            if with_pool:
                stack.enter_context(_process(pool_argv, env, work / f"{phase}-worker.log"))
                time.sleep(3)  # the pool's start, not measured
            seconds, deferred = _send_all(port, messages, rate=rate)
            out[f"{phase}_per_s"] = round(n / seconds, 1)
            out[f"{phase}_451"] = deferred
            if with_pool:
                deadline = time.monotonic() + 600
                while _rows(db, "SELECT COUNT(*) FROM email_analysis")[0][0] < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the pipeline did not finish")
                    time.sleep(0.2)
                pairs = _rows(db, "SELECT i.accepted_at, a.stored_at FROM email_ingress i "
                                  "JOIN email_analysis a ON a.message_id = i.message_id")
                lat = [(b - a) * 1000 for a, b in pairs]
                first = min(a for a, _ in pairs)
                last = max(b for _, b in pairs)
                out[f"{phase}_analysed_per_s"] = round(n / (last - first), 1)
                out[f"{phase}_latency_p50_ms"] = round(_pct(lat, 0.5), 1)
                out[f"{phase}_latency_p99_ms"] = round(_pct(lat, 0.99), 1)
                out[f"{phase}_deliveries_max"] = _rows(db, "SELECT MAX(deliveries) FROM "
                                                  "email_analysis")[0][0]
        if phase == "accept":
            out["accept_recorded"] = _rows(db, "SELECT COUNT(*) FROM email_ingress")[0][0]
    return out


def _rows_clear(db: str) -> None:
    """Empty what the accept phase left (its jobs were never relayed)."""
    for table in ("email_ingress", "taskwarren_outbox", "taskwarren_jobs"):
        if db.startswith("sqlite:///"):
            with contextlib.closing(sqlite3.connect(db.removeprefix("sqlite:///"))) as c:
                c.execute(f"DELETE FROM {table}")
                c.commit()
        else:
            from taskwarren.store import open_store

            store = open_store(db)
            with store.cursor() as cur:
                cur.execute(f"DELETE FROM {table}")
                store.connection().commit()
            store.close()


def parts(db: str, n: int, work: Path) -> dict[str, Any]:
    """Each step of an accept alone, one thread (ms per message, median)."""
    messages = _wire(n)
    maildir = Maildir(work / "parts-maildir")
    out: dict[str, Any] = {"config": f"parts ({db.split(':', 1)[0]})", "n": n}
    t: list[float] = []
    paths = []
    for data in messages:
        started = time.perf_counter()
        paths.append(maildir.deliver(data))
        t.append(time.perf_counter() - started)
    out["maildir_ms"] = round(statistics.median(t) * 1000, 2)
    t = []
    identities = []
    for data in messages:
        started = time.perf_counter()
        identities.append(identify(data))
        t.append(time.perf_counter() - started)
    out["key_ms"] = round(statistics.median(t) * 1000, 3)
    intake = Intake(db, Warren("memory://", store_url=db, jobs=True), max_outbox_age_s=3600)
    intake.prepare()
    _rows_clear(db)
    t = []
    for identity, path, data in zip(identities, paths, messages, strict=True):
        started = time.perf_counter()
        intake.accept(identity, path, len(data))
        t.append(time.perf_counter() - started)
    intake.close()
    out["store_tx_ms"] = round(statistics.median(t) * 1000, 2)
    for clients in (1, CLIENTS):
        seconds = _noop_smtp(messages, clients)
        out[f"smtp_noop_{clients}c_per_s"] = round(n / seconds, 1)
    return out


def _noop_smtp(messages: list[bytes], clients: int) -> float:
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: SMTP(Handler(), data_size_limit=None, loop=loop), "127.0.0.1", 0)
            state["port"] = server.sockets[0].getsockname()[1]
            state["stop"] = asyncio.Event()
            state["loop"] = loop
            ready.set()
            await state["stop"].wait()
            server.close()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        seconds, _ = _send_all(state["port"], messages, clients)
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--parts-n", type=int, default=300)
    parser.add_argument("--configs", default="embedded,rabbitmq-mariadb")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--paced-rate", type=float, default=10.0,
                        help="messages/s of the paced latency phase")
    parser.add_argument("--paced-s", type=float, default=20.0)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tw-ingress-bench-") as tmp:
        work = Path(tmp)
        for config in args.configs.split(","):
            if config == "embedded":
                db = f"sqlite:///{work / 'results.db'}"
                results.append(run_config(config, f"sqlite:///{work / 'broker.db'}", db,
                                          args.n, work / "embedded", args.paced_rate,
                                          args.paced_s))
                results.append(parts(f"sqlite:///{work / 'parts.db'}", args.parts_n,
                                     work / "embedded"))
            elif config == "rabbitmq-mariadb":
                from tests.support.databases import fresh_database
                from tests.support.rabbit import PrivateRabbit

                node = PrivateRabbit()
                node.start()
                try:
                    with fresh_database("mysql", work) as db:
                        results.append(run_config(config, node.url, db, args.n,
                                                  work / "rabbit", args.paced_rate,
                                                  args.paced_s))
                    with fresh_database("mysql", work) as db:
                        results.append(parts(db, args.parts_n, work / "rabbit"))
                finally:
                    node.stop()
            else:
                raise SystemExit(f"unknown config {config!r}")
    for row in results:
        print(json.dumps(row))
    if args.out is not None:
        with open(args.out, "a") as f:
            for row in results:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
