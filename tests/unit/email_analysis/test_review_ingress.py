"""Review (s-review): ingress paths that lose or bounce a message. Both FAIL on cea5023."""

from __future__ import annotations

import smtplib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from taskwarren.store.drivers import SQLiteTx
from tests.unit.email_analysis.test_email_ingress import MESSAGE, Running, send
from workers.email_analysis.intake import INGRESS_TABLE


def test_a_commit_whose_outcome_is_unknown_keeps_the_file_the_record_points_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The COMMIT reaches the server, the reply does not (PostgreSQL/MySQL connection lost
    # during COMMIT): the driver raises although the row is committed.
    running = Running(tmp_path)
    real_commit = SQLiteTx.commit
    calls = {"n": 0}

    def commit_then_fail(self: SQLiteTx) -> None:
        open_tx = self.raw.in_transaction
        real_commit(self)
        if open_tx:
            calls["n"] += 1
        if open_tx and calls["n"] == 1:
            raise sqlite3.OperationalError("connection lost during COMMIT")

    try:
        monkeypatch.setattr(SQLiteTx, "commit", commit_then_fail)
        assert send(running, MESSAGE)[0] == 451
        monkeypatch.setattr(SQLiteTx, "commit", real_commit)
        assert send(running, MESSAGE)[0] == 250  # the mail server's retry: a duplicate
    finally:
        running.ingress.stop()
    [(path,)] = running.query(f"SELECT path FROM {INGRESS_TABLE}")
    # The analysis job reads this path; it must still exist.
    assert Path(str(path)).exists(), "the recorded message file was deleted: analysis fails"


def test_a_message_whose_data_ends_while_the_ingress_stops_is_not_bounced(
        tmp_path: Path) -> None:
    running = Running(tmp_path, timeout_s=3.0, threads=1)
    blocker = sqlite3.connect(running.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the first accept waits for SQLite's write lock
    first = threading.Thread(target=send, args=(running, MESSAGE))
    late = running.smtp()
    try:
        late.ehlo()
        late.mail("ann@example.com")
        late.rcpt("bob@example.org")
        first.start()
        time.sleep(0.5)  # the first accept is in the pool
        running.ingress.shutdown()  # SIGTERM: the pool shuts down, waiting for it
        time.sleep(0.3)
        try:
            code, text = late.data(MESSAGE.replace(b"<one@", b"<two@"))
        except smtplib.SMTPServerDisconnected:
            code, text = 421, b"disconnected (fine: the mail server retries)"
        # 5xx is permanent: the mail server bounces the message and never retries.
        assert code < 500, (code, text)
    finally:
        late.close()
        blocker.execute("ROLLBACK")
        blocker.close()
        first.join(10)
        running.ingress.stop()
