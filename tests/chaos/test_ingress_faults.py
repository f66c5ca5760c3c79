"""Issue 17's proof: mail in over SMTP and LMTP, the ingress killed, the broker stopped.

1,000 generated messages from 8 concurrent clients (4 SMTP, 4 LMTP sessions, each
delivering as a mail server does: a message is done when it got 250, and is sent again
after a 451 or a broken connection). Meanwhile both ingresses are killed with kill -9
twice and restarted, and the broker (a private node: this test stops it) is stopped for
10 s. Then every message a client saw accepted must be analysed exactly once (one
result row per message, stored once: ``deliveries`` is 1), none twice, and the job store
shows every analysis job succeeded. The clients must have seen 451 while the broker was
stopped. The broker's side stays at-least-once (a task whose ack was lost with the
broker runs again); the results store turns that into once, by marking the ingress
record analysed in the transaction that stores the result.

The results store, the ingress's record and the outbox are one SQLite file here (the
embedded default); the broker is RabbitMQ 3.10 (the ingress's side does not depend on
the release).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chaos.nodes import RabbitNode
from tests.support.workers import ROOT, Pool, wait_until
from workers.email_analysis.generate import generate_messages
from workers.email_analysis.intake import identify

pytestmark = [pytest.mark.chaos, pytest.mark.rabbitmq(releases=("3.10",)), pytest.mark.slow,
              pytest.mark.timeout(300)]

MESSAGES = 1000
CLIENTS = 8
#: Seconds the broker stays stopped.
BROKER_DOWN_S = 10.0
#: The ingress's bound on how long a job may wait in the outbox before it answers 451.
MAX_OUTBOX_AGE_S = 2.0
#: Pause of each client after a message is accepted: at most about 60 messages a second
#: in all, so that mail still arrives while the broker is down and the outbox ages (at
#: full speed the clients were done within 2 s of the stop, and no 451 was due).
PAUSE_S = 1 / 8
QUEUES = ["email.ingest", "email.store", "email.flagged"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IngressProcess:
    """``taskwarren-email ingress`` in a process (group) of its own, to kill -9."""

    def __init__(self, tmp_path: Path, db_url: str, lmtp: bool) -> None:
        self.port = _free_port()
        self.argv = [sys.executable, "-m", "workers.email_analysis.cli", "ingress",
                     "--listen", f"127.0.0.1:{self.port}", "--maildir", str(tmp_path / "maildir"),
                     "--db", db_url, "--max-outbox-age", str(MAX_OUTBOX_AGE_S),
                     *(["--lmtp"] if lmtp else [])]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "TASKWARREN_STORE_URL": db_url}
        self.env.pop("TASKWARREN_URL", None)
        self.log = tmp_path / f"ingress-{'lmtp' if lmtp else 'smtp'}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(ROOT), stdout=log,
                                         stderr=log, start_new_session=True)
        wait_until(self._listening, timeout=30, what=f"the ingress on port {self.port}")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the ingress exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Tally:
    """What the clients saw."""

    accepted: list[str] = field(default_factory=list)  # message ids, once each
    deferred_at: list[float] = field(default_factory=list)  # monotonic times of 451s
    broken_sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def _session(port: int, lmtp: bool) -> smtplib.SMTP:
    client = smtplib.LMTP("127.0.0.1", port, timeout=30) if lmtp else smtplib.SMTP(
        "127.0.0.1", port, timeout=30)
    client.ehlo()
    return client


def _deliver(client: smtplib.SMTP, data: bytes) -> int:
    code, _ = client.mail("mta@example.net")
    if code != 250:
        return code
    code, _ = client.rcpt("analysis@example.net")
    if code != 250:
        return code
    return client.data(data)[0]


def _client(port: Callable[[], int], lmtp: bool, batch: list[tuple[str, bytes]],
            tally: Tally) -> None:
    """Deliver ``batch`` the way a mail server does: until each one got its 250."""
    client: smtplib.SMTP | None = None
    for message_id, data in batch:
        while True:
            try:
                if client is None:
                    client = _session(port(), lmtp)
                code = _deliver(client, data)
            except (smtplib.SMTPException, OSError):
                with tally.lock:
                    tally.broken_sessions += 1
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                time.sleep(0.05)
                continue
            if code == 250:
                with tally.lock:
                    tally.accepted.append(message_id)
                time.sleep(PAUSE_S)
                break
            assert code == 451, f"unexpected reply {code}"
            with tally.lock:
                tally.deferred_at.append(time.monotonic())
            time.sleep(0.1)  # a mail server would wait minutes
    if client is not None:
        with contextlib.suppress(Exception):
            client.quit()


def _count(db: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_every_message_a_client_saw_accepted_is_analysed_exactly_once(
        private_node: RabbitNode, tmp_path: Path) -> None:
    # On the wire, as a mail server sends them: CRLF line ends (smtplib sends bytes as
    # they are).
    wire = [re.sub(rb"\r?\n", b"\r\n", m.raw) for m in generate_messages(MESSAGES, seed=17)]
    messages = [(identify(data).message_id, data) for data in wire]
    assert len({mid for mid, _ in messages}) == MESSAGES  # so that a count can tell
    db = tmp_path / "results.db"
    db_url = f"sqlite:///{db}"
    smtp = IngressProcess(tmp_path, db_url, lmtp=False)
    lmtp = IngressProcess(tmp_path, db_url, lmtp=True)
    pool = Pool("workers.email_analysis.tasks", QUEUES, private_node.url, concurrency=2,
                env={"EMAIL_ANALYSIS_DB": str(db), "TASKWARREN_STORE_URL": db_url,
                     "EMAIL_ANALYSIS_MAILDIR": str(tmp_path / "maildir")},
                log_path=tmp_path / "worker.log")
    tally = Tally()
    clients = [threading.Thread(
        target=_client, args=((lambda s=server: s.port), server is lmtp,
                              messages[i::CLIENTS], tally), daemon=True)
        for i, server in enumerate([smtp, lmtp] * (CLIENTS // 2))]
    started = time.monotonic()
    try:
        for thread in clients:
            thread.start()
        wait_until(lambda: tally.count() >= 150, timeout=60, what="150 accepted")
        for server in (smtp, lmtp):
            server.kill9()
            server.start()
        wait_until(lambda: tally.count() >= 350, timeout=60, what="350 accepted")
        private_node.stop_app()
        down_at = time.monotonic()
        time.sleep(BROKER_DOWN_S)
        private_node.start_app()
        up_at = time.monotonic()
        wait_until(lambda: tally.count() >= 700, timeout=120, what="700 accepted")
        for server in (smtp, lmtp):
            server.kill9()
            server.start()
        for thread in clients:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in clients), "a client did not finish"
        accepted_s = time.monotonic() - started
        wait_until(lambda: _count(db, "SELECT COUNT(*) FROM email_analysis") >= MESSAGES,
                   timeout=120, what="every accepted message analysed")
        wait_until(lambda: _count(db, "SELECT COUNT(*) FROM taskwarren_jobs WHERE task = "
                                      "'workers.email_analysis.tasks.ingest' AND state = "
                                      "'succeeded'") >= MESSAGES,
                   timeout=60, what="every analysis job recorded as succeeded")
    finally:
        for thread in clients:
            thread.join(timeout=1)
        smtp.stop()
        lmtp.stop()
        exit_code = pool.stop()

    print(f"\naccepted {len(tally.accepted)} in {accepted_s:.1f}s; 451s {len(tally.deferred_at)}"
          f"; broken sessions {tally.broken_sessions}")
    assert exit_code == 0
    # Every message got its 250 once (the clients stop at the first) ...
    assert sorted(tally.accepted) == sorted(mid for mid, _ in messages)
    # ... was recorded once, and analysed exactly once: one row each, delivered once.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = dict(conn.execute("SELECT message_id, deliveries FROM email_analysis"))
        recorded = conn.execute("SELECT COUNT(*), COUNT(DISTINCT message_key), "
                                "COUNT(analysed_at) FROM email_ingress").fetchone()
        jobs = conn.execute("SELECT COUNT(*) FROM taskwarren_jobs WHERE task = "
                            "'workers.email_analysis.tasks.ingest'").fetchone()[0]
        outbox = conn.execute("SELECT COUNT(*) FROM taskwarren_outbox").fetchone()[0]
    assert sorted(rows) == sorted(tally.accepted)
    twice = {mid: n for mid, n in rows.items() if n != 1}
    assert twice == {}, f"analysed more than once: {list(twice.items())[:5]}"
    assert tuple(recorded) == (MESSAGES, MESSAGES, MESSAGES)
    assert (jobs, outbox) == (MESSAGES, 0)
    # The faults were felt: sessions broke at the kills, and 451s came while the broker
    # was down (they may go on a little after it is back, until the relay catches up).
    assert tally.broken_sessions >= 2
    during = [t for t in tally.deferred_at if down_at <= t <= up_at + 1.0]
    assert during, "no client saw 451 while the broker was stopped"
