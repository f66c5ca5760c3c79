"""The taskwarren tasks: queues, retry policy, and what each one does."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("taskwarren")

from taskwarren.message import H_ERROR_TYPE
from taskwarren.testing import InMemory
from workers.email_analysis import tasks
from workers.email_analysis.analysis import Analysis, analyse
from workers.email_analysis.generate import generate_maildir
from workers.email_analysis.store import SQLiteStore

from .helpers import NOW


def test_the_tasks_use_the_email_ingest_and_email_store_queues() -> None:
    assert tasks.ingest.queue == "email.ingest"
    assert tasks.store_result.queue == "email.store"


def test_an_unreadable_file_is_dead_lettered_at_once_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path))

    tasks.ingest.send(path=str(tmp_path / "missing"), message_id="<m@x>")
    with pytest.raises(tasks.UnreadableMessageError, match="no such file"):
        taskwarren_memory.run()

    [dead] = taskwarren_memory.dead_letters(tasks.INGEST_QUEUE)
    assert dead.attempt == 0
    assert dead.headers[H_ERROR_TYPE].endswith("UnreadableMessageError")
    options = tasks.ingest.task_options
    assert options.retries == 3
    assert options.should_retry(RuntimeError("database is locked"), attempt=0) is True


def test_ingest_analyses_the_file_and_sends_the_result_to_the_store_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path))
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    [(path, message_id)] = generate_maildir(tmp_path, 1, seed=8)

    tasks.ingest.run_now(path=str(path), message_id=message_id)

    assert taskwarren_memory.waiting(tasks.STORE_QUEUE) == 1
    [stored] = taskwarren_memory.run([tasks.STORE_QUEUE])
    assert stored.task == tasks.store_result.name
    with SQLiteStore(tmp_path / "results.db") as results:
        result = results.get(message_id)
    assert isinstance(result, Analysis)
    assert result.size_bytes == path.stat().st_size


def test_an_analysis_survives_the_trip_through_a_task_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    [(path, message_id)] = generate_maildir(tmp_path, 1, seed=8)
    result = analyse(path.read_bytes(), message_id, now=NOW)

    tasks.store_result.run_now(analysis=result)  # through JSON, as a worker receives it

    with SQLiteStore(tmp_path / "results.db") as results:
        assert results.get(message_id) == result


def test_store_result_upserts_into_email_analysis_db_once_per_message_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    result = Analysis(message_id="<m@x>", score=12, analysed_at=NOW)

    tasks.store_result.run_now(analysis=result)
    tasks.store_result.run_now(analysis=result)  # delivered twice

    with SQLiteStore(tmp_path / "results.db") as results:
        assert results.count() == 1
        assert results.get("<m@x>") == result
