"""The SMTP/LMTP ingress, driven by smtplib: durable, recorded, queued, then 250.

No broker: the ingress only writes the Maildir and the results store (which holds the
outbox); what a relay and a pool then do with the rows is the chaos test's part
(tests/chaos/test_ingress_faults.py).
"""

from __future__ import annotations

import contextlib
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.testing import InMemory
from workers.email_analysis import tasks
from workers.email_analysis.ingress import Ingress, IngressConfig
from workers.email_analysis.intake import INGRESS_TABLE, Intake, identify
from workers.email_analysis.store import SQLiteStore

MESSAGE = (b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\n"
           b"Message-ID: <one@example.com>\r\nSubject: hello\r\n\r\nHello Bob.\r\n")


class Running:
    """An ingress on a free port over a SQLite results store in ``tmp_path``."""

    def __init__(self, tmp_path: Path, **config: object) -> None:
        self.db = tmp_path / "results.db"
        self.url = f"sqlite:///{self.db}"
        self.maildir = tmp_path / "maildir"
        timeout_s = float(config.pop("timeout_s", 5.0))  # type: ignore[arg-type]
        max_age_s = float(config.pop("max_outbox_age_s", 60.0))  # type: ignore[arg-type]
        self.app = Warren("memory://", store_url=self.url, jobs=True)
        self.intake = Intake(self.url, self.app, max_outbox_age_s=max_age_s,
                             timeout_s=timeout_s)
        self.ingress = Ingress(IngressConfig(port=0, maildir=self.maildir, **config),  # type: ignore[arg-type]
                               self.intake)
        self.ingress.start()

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.ingress.port, timeout=30)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(self.db)) as conn, conn:
            return conn.execute(sql).fetchall()

    def new_files(self) -> list[Path]:
        return sorted((self.maildir / "new").iterdir())


@pytest.fixture
def ingress(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path)
    yield running
    running.ingress.stop()


def send(running: Running, data: bytes) -> tuple[int, bytes]:
    with running.smtp() as client:
        client.ehlo()
        client.mail("ann@example.com")
        client.rcpt("bob@example.org")
        return client.data(data)


def test_a_message_is_in_the_maildir_recorded_and_queued_when_the_client_sees_250(
        ingress: Running) -> None:
    code, _ = send(ingress, MESSAGE)

    assert code == 250
    [path] = ingress.new_files()
    assert path.read_bytes() == MESSAGE
    assert list((ingress.maildir / "tmp").iterdir()) == []
    [(message_id, stored_path, task_id)] = ingress.query(
        f"SELECT message_id, path, task_id FROM {INGRESS_TABLE}")
    assert (message_id, stored_path) == ("<one@example.com>", str(path))
    [(outbox_task_id, queue, body)] = ingress.query(
        "SELECT task_id, queue, body FROM taskwarren_outbox")
    assert (outbox_task_id, queue) == (task_id, "email.ingest")
    assert str(path).encode() in body
    [(state, unique_key)] = ingress.query(
        "SELECT state, unique_key FROM taskwarren_jobs WHERE task_id = "
        f"'{task_id}'")
    assert (state, unique_key) == ("queued", "email:" + identify(MESSAGE).key)


def test_the_same_message_delivered_twice_is_queued_once(ingress: Running) -> None:
    first, _ = send(ingress, MESSAGE)
    again, _ = send(ingress, MESSAGE)
    # A relay on the way added a header: still the same Message-ID and body.
    relayed, _ = send(ingress, b"Received: from mx by relay\r\n" + MESSAGE)

    assert (first, again, relayed) == (250, 250, 250)
    assert ingress.query(f"SELECT COUNT(*) FROM {INGRESS_TABLE}") == [(1,)]
    assert ingress.query("SELECT COUNT(*) FROM taskwarren_outbox") == [(1,)]
    assert len(ingress.new_files()) == 1  # the duplicates' files are gone


def test_the_same_message_id_with_another_body_is_another_message(ingress: Running) -> None:
    send(ingress, MESSAGE)
    send(ingress, MESSAGE.replace(b"Hello Bob.", b"Hello Carol."))

    assert ingress.query("SELECT COUNT(*) FROM taskwarren_outbox") == [(2,)]


@pytest.mark.parametrize("data", [
    pytest.param(b"From: x@example.com\r\nSubject: no id\r\n\r\nbody\r\n", id="no-message-id"),
    pytest.param(b"Message-ID: <mime@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
                 b" boundary=\"b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\ntruncated",
                 id="broken-mime"),
    pytest.param(b"Message-ID: <\xff\xfe8bit@x>\r\nSubject: \xe9t\xe9 \xc3\xa9\r\n"
                 b"From: \x00\x1b[2J@x\r\n\r\n\xff body\r\n", id="8-bit-headers"),
    pytest.param(b"no header at all", id="no-headers"),
])
def test_bad_mail_is_accepted_under_a_clean_message_id_and_the_ingress_goes_on(
        ingress: Running, data: bytes) -> None:
    code, _ = send(ingress, data)

    assert code == 250
    [(message_id,)] = ingress.query(f"SELECT message_id FROM {INGRESS_TABLE}")
    assert message_id == identify(data).message_id
    assert all(" " < ch < "\x7f" for ch in str(message_id).replace(" ", "!"))
    assert send(ingress, MESSAGE)[0] == 250


def test_a_message_over_the_size_limit_gets_552_and_leaves_nothing(tmp_path: Path) -> None:
    running = Running(tmp_path, max_bytes=10_000)
    try:
        with running.smtp() as client:
            client.ehlo()
            client.mail("ann@example.com")
            client.rcpt("bob@example.org")
            code, _ = client.data(MESSAGE + b"x" * 200 + (b"y" * 70 + b"\r\n") * 200)
            assert code == 552
            client.rset()
            assert client.sendmail("ann@example.com", ["bob@example.org"], MESSAGE) == {}
    finally:
        running.ingress.stop()
    assert len(running.new_files()) == 1


@pytest.mark.slow
def test_a_50_mb_message_is_accepted_whole(ingress: Running) -> None:
    line = b"A" * 76 + b"\r\n"
    data = MESSAGE + line * (50_000_000 // len(line))

    code, _ = send(ingress, data)

    assert code == 250
    [path] = ingress.new_files()
    assert path.stat().st_size == len(data)


def test_lmtp_answers_once_per_recipient_and_queues_the_message_once(tmp_path: Path) -> None:
    running = Running(tmp_path, lmtp=True)
    try:
        client = smtplib.LMTP("127.0.0.1", running.ingress.port, timeout=30)
        try:
            assert client.ehlo()[0] == 250  # LHLO
            client.mail("ann@example.com")
            for rcpt in ("bob@example.org", "carol@example.org", "dan@example.org"):
                assert client.rcpt(rcpt)[0] == 250
            replies = [client.data(MESSAGE)[0], client.getreply()[0], client.getreply()[0]]
            # One recipient: smtplib's own sendmail reads its one reply.
            single = client.sendmail("ann@example.com", ["eve@example.org"],
                                     MESSAGE.replace(b"one@", b"two@"))
        finally:
            client.quit()
    finally:
        running.ingress.stop()

    assert replies == [250, 250, 250]
    assert single == {}
    assert running.query("SELECT COUNT(*) FROM taskwarren_outbox") == [(2,)]


def test_a_blocked_store_gets_451_then_the_retry_is_accepted(tmp_path: Path) -> None:
    running = Running(tmp_path, timeout_s=0.5)
    blocker = sqlite3.connect(running.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # SQLite's one write lock, held
        code, text = send(running, MESSAGE)
        assert (code, text[:5]) == (451, b"4.3.0")
        assert running.new_files() == []
        blocker.execute("ROLLBACK")

        assert send(running, MESSAGE)[0] == 250
    finally:
        blocker.close()
        running.ingress.stop()
    assert running.query(f"SELECT COUNT(*) FROM {INGRESS_TABLE}") == [(1,)]


def test_analysis_that_falls_behind_gets_451_until_the_outbox_drains(tmp_path: Path) -> None:
    # No relay runs: the first job stays in the outbox, as when the broker is down.
    running = Running(tmp_path, max_outbox_age_s=0.3)
    try:
        assert send(running, MESSAGE)[0] == 250
        time.sleep(0.4)  # the first job is now older than the bound
        refused, _ = send(running, MESSAGE.replace(b"one@", b"two@"))
        running.query("DELETE FROM taskwarren_outbox")  # what a relay does once published
        accepted, _ = send(running, MESSAGE.replace(b"one@", b"two@"))
    finally:
        running.ingress.stop()

    assert (refused, accepted) == (451, 250)
    assert running.query(f"SELECT COUNT(*) FROM {INGRESS_TABLE}") == [(2,)]
    assert len(running.new_files()) == 2


def test_the_command_refuses_a_job_store_other_than_the_results_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from workers.email_analysis.cli import main

    monkeypatch.setenv("TASKWARREN_STORE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    result = CliRunner().invoke(main, ["ingress", "--maildir", str(tmp_path / "m"),
                                       "--db", str(tmp_path / "results.db")])

    assert result.exit_code == 2
    assert "TASKWARREN_STORE_URL must name the same database" in result.output
    assert not (tmp_path / "m").exists()


def test_a_redelivery_whose_recorded_file_is_gone_before_analysis_is_kept_and_analysed(
        ingress: Running, monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory) -> None:

    assert send(ingress, MESSAGE)[0] == 250
    [lost] = ingress.new_files()
    lost.unlink()  # the file the job names is gone (a disk fault, an operator)
    assert send(ingress, MESSAGE)[0] == 250
    [kept] = ingress.new_files()
    assert ingress.query(f"SELECT path FROM {INGRESS_TABLE}") == [(str(kept),)]
    assert ingress.query("SELECT COUNT(*) FROM taskwarren_outbox") == [(1,)]
    # The job still names the lost file; ingest reads the one the record points at.
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(ingress.db))
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(ingress.maildir))
    tasks.ingest.send(path=str(lost), message_id="<one@example.com>",
                      message_key=identify(MESSAGE).key)
    taskwarren_memory.run()
    with SQLiteStore(ingress.db) as results:
        stored = results.get("<one@example.com>")
    assert stored is not None and stored.subject == "hello"


def test_sessions_beyond_the_cap_are_answered_421_and_a_closed_one_frees_its_place(
        tmp_path: Path) -> None:
    running = Running(tmp_path, max_sessions=2)
    open_sessions = [running.smtp(), running.smtp()]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            running.smtp()
        assert refused.value.smtp_code == 421
        open_sessions.pop().quit()
        deadline = time.monotonic() + 5
        while True:  # the server sees the QUIT's close a moment after the 221
            try:
                open_sessions.append(running.smtp())
                break
            except smtplib.SMTPConnectError:
                assert time.monotonic() < deadline, "the closed session kept its place"
                time.sleep(0.05)
        assert open_sessions[-1].ehlo()[0] == 250
    finally:
        for client in open_sessions:
            client.close()
        running.ingress.stop()


def test_an_accept_that_times_out_before_a_thread_takes_it_is_dropped_not_run_later(
        tmp_path: Path) -> None:
    import threading

    running = Running(tmp_path, timeout_s=5.0, threads=1, accept_timeout_s=0.5)
    blocker = sqlite3.connect(running.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the one thread waits for SQLite's write lock
    first = threading.Thread(target=send, args=(running, MESSAGE))
    try:
        first.start()
        time.sleep(0.2)  # the first accept holds the only thread
        code, _ = send(running, MESSAGE.replace(b"<one@", b"<two@"))
        assert code == 451  # queued behind it past the timeout
        blocker.execute("ROLLBACK")
        first.join(10)
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
        running.ingress.stop()  # waits for the pool
    # The first (already running) committed late; the second never ran.
    assert running.query(f"SELECT message_id FROM {INGRESS_TABLE}") == [("<one@example.com>",)]
    assert len(running.new_files()) == 1


def test_an_unexpected_error_is_answered_451_without_its_text(
        ingress: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.email_analysis import ingress as module

    def broken(data: bytes) -> object:
        raise RuntimeError("internal detail /etc/secret")

    monkeypatch.setattr(module, "identify", broken)
    code, text = send(ingress, MESSAGE)

    assert (code, b"secret" in text) == (451, False)
    assert ingress.new_files() == []


def test_an_unexpected_error_over_lmtp_is_answered_451_once_per_recipient(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.email_analysis import ingress as module

    def broken(data: bytes) -> object:
        raise RuntimeError("internal detail")

    monkeypatch.setattr(module, "identify", broken)
    running = Running(tmp_path, lmtp=True)
    try:
        client = smtplib.LMTP("127.0.0.1", running.ingress.port, timeout=30)
        try:
            client.ehlo()
            client.mail("ann@example.com")
            for rcpt in ("bob@example.org", "carol@example.org"):
                client.rcpt(rcpt)
            replies = [client.data(MESSAGE)[0], client.getreply()[0]]
            assert client.noop()[0] == 250  # the session goes on
        finally:
            client.quit()
    finally:
        running.ingress.stop()

    assert replies == [451, 451]


def test_stopping_closes_the_sessions_left_open_and_a_second_stop_is_harmless(
        tmp_path: Path) -> None:
    running = Running(tmp_path)
    idle = running.smtp()
    try:
        idle.ehlo()
        running.ingress.stop()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            idle.noop()
        running.ingress.stop()  # the loop has ended: nothing to do, no error
    finally:
        idle.close()
