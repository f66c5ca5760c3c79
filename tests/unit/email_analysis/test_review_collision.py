"""Review (s-review): the ingress keys messages on Message-ID *and* body, the results
store on Message-ID alone: a second message reusing a Message-ID (anyone can write
one) replaces the stored analysis of the first. FAILS on cea5023."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.testing import InMemory
from workers.email_analysis import tasks
from workers.email_analysis.intake import Intake, identify
from workers.email_analysis.maildir import Maildir
from workers.email_analysis.store import SQLiteStore

PHISH = (b"From: IT Support <support@examp1e-login.top>\r\nTo: bob@example.org\r\n"
         b"Message-ID: <victim@example.com>\r\nSubject: URGENT verify your password\r\n\r\n"
         b"Your account will be suspended. Verify your password now at "
         b"http://192.0.2.7/login.php?acct=bob urgent urgent\r\n")
COVER = (b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\n"
         b"Message-ID: <victim@example.com>\r\nSubject: lunch\r\n\r\nLunch at noon?\r\n")


def test_a_second_message_with_the_same_message_id_does_not_replace_the_first_analysis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory) -> None:
    db = tmp_path / "results.db"
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(db))
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path / "maildir"))
    intake = Intake(f"sqlite:///{db}", Warren("memory://", store_url=f"sqlite:///{db}"))
    intake.prepare()
    maildir = Maildir(tmp_path / "maildir")
    keys = []
    for data in (PHISH, COVER):
        identity = identify(data)
        path = maildir.deliver(data)
        assert intake.accept(identity, path, len(data))  # two messages, as the ingress says
        keys.append(identity.key)
        # What the outbox row carries, sent here directly (no relay in this test).
        tasks.ingest.send(path=str(path), message_id=identity.message_id,
                          message_key=identity.key)
        taskwarren_memory.run()
        if data is PHISH:
            with SQLiteStore(db) as results:
                first = results.get("<victim@example.com>")
                assert first is not None
    intake.close()
    assert keys[0] != keys[1]
    with SQLiteStore(db) as results:
        stored = results.get("<victim@example.com>")
    assert stored is not None
    assert stored.subject == first.subject, (
        f"the analysis of {first.subject!r} (score {first.score}) was replaced by that of "
        f"{stored.subject!r} (score {stored.score})")
