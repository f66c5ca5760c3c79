"""Retention: the Maildir files of messages analysed long ago are removed, nothing else.

On SQLite, and on the machine's MariaDB and PostgreSQL (each a fresh database). The
messages go through the real ingress path: the Maildir writer and the intake's
transaction; their analyses through ``upsert_once``, as the workers store them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskwarren import Warren
from tests.support.databases import fresh_database
from workers.email_analysis import tasks
from workers.email_analysis.analysis import Analysis
from workers.email_analysis.cli import main
from workers.email_analysis.files import UnreadableMessageError
from workers.email_analysis.intake import Intake, identify
from workers.email_analysis.maildir import Maildir
from workers.email_analysis.prune import OutsideMaildirError, prune
from workers.email_analysis.store import ResultStore, close_default_stores, open_store

from .helpers import NOW

HOUR = 3600.0


def raw(n: int) -> bytes:
    return (f"Message-ID: <prune-{n}@example.com>\r\nFrom: a@example.com\r\n"
            f"Subject: {n}\r\n\r\nbody {n}\r\n").encode()


@dataclass
class Accepted:
    store: ResultStore
    db_url: str
    maildir: Path
    paths: list[Path]
    keys: list[str]


@pytest.fixture(params=["sqlite", "mysql", "postgresql"])
def accepted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Accepted]:
    """Three messages accepted by the ingress; the first two analysed, the third not."""
    with fresh_database(request.param, tmp_path) as db_url:
        maildir = Maildir(tmp_path / "maildir")
        intake = Intake(db_url, Warren("memory://", store_url=db_url, jobs=True))
        intake.prepare()
        paths, keys = [], []
        try:
            for n in range(3):
                data = raw(n)
                path = maildir.deliver(data)
                assert intake.accept(identify(data), path, len(data)) is True
                paths.append(path)
                keys.append(identify(data).key)
        finally:
            intake.close()
        target = db_url.removeprefix("sqlite:///")
        with open_store(target if db_url.startswith("sqlite") else db_url) as store:
            for n in range(2):
                analysis = Analysis(message_id=f"<prune-{n}@example.com>",
                                    sender_domain="example.com", score=10, reasons=[],
                                    analysed_at=NOW)
                assert store.upsert_once(analysis, keys[n]) is True
            yield Accepted(store, db_url, maildir.root, paths, keys)


def test_files_of_messages_analysed_long_enough_ago_go_and_their_records_forget_them(
        accepted: Accepted) -> None:
    store, paths = accepted.store, accepted.paths

    assert prune(store, accepted.maildir, HOUR) == 0  # analysed just now: too recent
    assert all(p.exists() for p in paths)

    later = time.time() + 2 * HOUR
    assert prune(store, accepted.maildir, HOUR, now=later) == 2
    assert [p.exists() for p in paths] == [False, False, True]  # the third is not analysed
    assert [store.recorded_path(k) for k in accepted.keys] == ["", "", str(paths[2])]
    assert store.analysed(accepted.keys[0]) and not store.analysed(accepted.keys[2])
    assert prune(store, accepted.maildir, HOUR, now=later) == 0  # nothing left to do


def test_a_record_outside_the_named_maildir_stops_the_run_and_nothing_is_touched(
        accepted: Accepted, tmp_path: Path) -> None:
    other = Maildir(tmp_path / "another").root
    with pytest.raises(OutsideMaildirError, match="--maildir"):
        prune(accepted.store, other, HOUR, now=time.time() + 2 * HOUR)
    assert all(p.exists() for p in accepted.paths)
    assert accepted.store.recorded_path(accepted.keys[0]) == str(accepted.paths[0])


def test_a_file_already_gone_is_forgotten_and_the_rest_removed(accepted: Accepted) -> None:
    accepted.paths[0].unlink()  # a crash between the unlink and the record's update
    assert prune(accepted.store, accepted.maildir, HOUR, now=time.time() + 2 * HOUR) == 1
    assert accepted.store.recorded_path(accepted.keys[0]) == ""
    assert not accepted.paths[1].exists()


def test_a_replayed_ingest_of_a_pruned_message_does_nothing(
        accepted: Accepted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(accepted.maildir))
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", accepted.db_url.removeprefix("sqlite:///")
                       if accepted.db_url.startswith("sqlite") else accepted.db_url)
    sent: list[object] = []
    monkeypatch.setattr(tasks.store_result, "send", lambda **kw: sent.append(kw))
    prune(accepted.store, accepted.maildir, HOUR, now=time.time() + 2 * HOUR)
    try:
        tasks.ingest.fn(str(accepted.paths[0]), "<prune-0@example.com>", accepted.keys[0])
        assert sent == []  # analysed before: no second result, no dead letter
        # A message not analysed yet whose file is missing still fails (dead-lettered).
        accepted.paths[2].unlink()
        with pytest.raises(UnreadableMessageError, match="no such file"):
            tasks.ingest.fn(str(accepted.paths[2]), "<prune-2@example.com>",
                            accepted.keys[2])
    finally:
        close_default_stores()


def test_the_prune_command(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as db_url:
        maildir = Maildir(tmp_path / "maildir")
        intake = Intake(db_url, Warren("memory://", store_url=db_url, jobs=True))
        intake.prepare()
        data = raw(7)
        path = maildir.deliver(data)
        try:
            assert intake.accept(identify(data), path, len(data))
        finally:
            intake.close()
        db = db_url.removeprefix("sqlite:///")
        with open_store(db) as store:
            store.upsert_once(Analysis(message_id="<prune-7@example.com>", score=1,
                                       reasons=[], analysed_at=NOW), identify(data).key)
        runner = CliRunner()
        args = ["prune", "--maildir", str(maildir.root), "--db", db]
        kept = runner.invoke(main, [*args, "--older-than", "1"])
        assert kept.exit_code == 0 and "removed 0 message file(s)" in kept.output
        gone = runner.invoke(main, [*args, "--older-than", "0"])
        assert gone.exit_code == 0, gone.output
        assert "removed 1 message file(s)" in gone.output and not path.exists()
        bad = runner.invoke(main, ["prune", "--maildir", str(tmp_path), "--db", db,
                                   "--older-than", "x"])
        assert bad.exit_code == 2


def test_a_file_a_mail_client_moved_to_cur_is_removed_there(accepted: Accepted) -> None:
    first = accepted.paths[0]
    seen = first.parent.parent / "cur" / (first.name + ":2,S")
    first.rename(seen)
    assert prune(accepted.store, accepted.maildir, HOUR, now=time.time() + 2 * HOUR) == 2
    assert not seen.exists() and accepted.paths[2].exists()
