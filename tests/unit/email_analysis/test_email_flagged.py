"""High-scoring messages are published as ``email.flagged`` events and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("taskwarren")

from taskwarren.testing import InMemory
from workers.email_analysis import tasks
from workers.email_analysis.analysis import analyse
from workers.email_analysis.generate import generate_maildir


def test_every_message_scoring_high_is_published_once_and_recorded_by_its_subscriber(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    monkeypatch.setenv("EMAIL_FLAGGED_LOG", str(tmp_path / "flagged.jsonl"))
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path / "maildir"))
    taskwarren_memory.app.bind_subscriptions()  # as the worker of email.flagged does
    written = generate_maildir(tmp_path / "maildir", 25, seed=12)

    tasks.ingest.send_many([{"path": str(path), "message_id": mid} for path, mid in written])
    taskwarren_memory.run()

    expected = {mid for path, mid in written
                if analyse(path.read_bytes(), mid).score >= tasks.FLAG_SCORE}
    lines = (tmp_path / "flagged.jsonl").read_text().splitlines()
    recorded = [json.loads(line) for line in lines]
    assert expected, "the seed has high-scoring messages"
    assert sorted(r["message_id"] for r in recorded) == sorted(expected)
    assert all(r["score"] >= tasks.FLAG_SCORE and r["reasons"] for r in recorded)


def test_the_flagged_subscriber_is_an_email_flagged_subscription_on_its_own_queue() -> None:
    assert tasks.record_flagged.queue == "email.flagged"
    assert tasks.record_flagged.subscriptions == ("email.flagged",)
