"""The taskwarren tasks: queues, retry policy, and what each one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("taskwarren")

from workers.email_analysis import tasks
from workers.email_analysis.analysis import Analysis, analyse
from workers.email_analysis.generate import generate_maildir
from workers.email_analysis.store import SQLiteStore

from .helpers import NOW


def test_the_tasks_use_the_email_ingest_and_email_store_queues() -> None:
    assert tasks.ingest.queue == "email.ingest"
    assert tasks.store_result.queue == "email.store"


def test_an_unreadable_file_is_dead_lettered_at_once_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path))
    with pytest.raises(tasks.UnreadableMessageError, match="no such file") as caught:
        tasks.ingest.fn(path=str(tmp_path / "missing"), message_id="<m@x>")

    options = tasks.ingest.task_options
    assert options.retries == 3
    assert options.should_retry(caught.value, attempt=0) is False
    assert options.should_retry(RuntimeError("database is locked"), attempt=0) is True


def test_ingest_analyses_the_file_and_sends_the_result_to_the_store_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path))
    [(path, message_id)] = generate_maildir(tmp_path, 1, seed=8)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.store_result, "send", lambda **kwargs: sent.append(kwargs))

    tasks.ingest.fn(path=str(path), message_id=message_id)

    [call] = sent
    result = call["analysis"]
    assert isinstance(result, Analysis)
    assert result.message_id == message_id
    assert result.size_bytes == path.stat().st_size


def test_an_analysis_survives_the_trip_through_a_task_message(tmp_path: Path) -> None:
    [(path, message_id)] = generate_maildir(tmp_path, 1, seed=8)
    result = analyse(path.read_bytes(), message_id, now=NOW)

    body = tasks.store_result.encode_call((), {"analysis": result})

    assert tasks.store_result.decode_call(body) == {"analysis": result, "message_key": None}


def test_store_result_upserts_into_email_analysis_db_once_per_message_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    result = Analysis(message_id="<m@x>", score=12, analysed_at=NOW)

    tasks.store_result.fn(analysis=result)
    tasks.store_result.fn(analysis=result)  # delivered twice

    with SQLiteStore(tmp_path / "results.db") as results:
        assert results.count() == 1
        assert results.get("<m@x>") == result
