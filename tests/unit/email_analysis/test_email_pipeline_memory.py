"""The whole pipeline in one process, on taskwarren's in-memory broker."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("taskwarren")

from taskwarren.message import H_ERROR, H_ERROR_TYPE
from taskwarren.testing import InMemory
from workers.email_analysis import tasks
from workers.email_analysis.generate import generate_maildir
from workers.email_analysis.store import SQLiteStore


def test_every_message_is_stored_once_and_an_unreadable_one_is_dead_lettered_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path / "maildir"))
    written = generate_maildir(tmp_path / "maildir", 25, seed=12)
    calls = [{"path": str(path), "message_id": mid} for path, mid in written]
    calls.append({"path": str(tmp_path / "maildir" / "new" / "gone"), "message_id": "<gone@x>"})

    tasks.ingest.send_many(calls)
    tasks.ingest.send_many(calls[:5])  # the first five again, as after a redelivery
    results = taskwarren_memory.run(raise_errors=False)

    with SQLiteStore(tmp_path / "results.db") as results_db:
        assert results_db.count() == 25
        assert results_db.deliveries(written[0][1]) == 2
        assert results_db.get("<gone@x>") is None
    [dead] = taskwarren_memory.dead_letters(tasks.INGEST_QUEUE)
    assert dead.attempt == 0  # never retried
    assert dead.headers[H_ERROR_TYPE].endswith("UnreadableMessageError")
    assert str(dead.headers[H_ERROR]).startswith(f"{tmp_path}/maildir/new/gone: no such file")
    assert taskwarren_memory.dead_letters(tasks.STORE_QUEUE) == []
    outcomes = Counter((r.task, r.outcome) for r in results)
    assert outcomes[tasks.ingest.name, "succeeded"] == 30
    assert outcomes[tasks.ingest.name, "dead_lettered"] == 1
    assert outcomes[tasks.store_result.name, "succeeded"] == 30


def test_a_store_that_fails_twice_is_retried_by_the_tasks_own_policy_and_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path / "maildir"))
    [(path, message_id)] = generate_maildir(tmp_path / "maildir", 1, seed=3)
    upsert = tasks.store.upsert
    failures = iter([RuntimeError("database is locked")] * 2)

    def flaky_upsert(analysis: object) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        upsert(analysis)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks.store, "upsert", flaky_upsert)

    tasks.ingest.send(path=str(path), message_id=message_id)
    results = taskwarren_memory.run()  # the backoff between tries is skipped, not slept

    assert [r.outcome for r in results] == ["succeeded", "retried", "retried", "succeeded"]
    with SQLiteStore(tmp_path / "results.db") as results_db:
        assert results_db.count() == 1
        assert results_db.deliveries(message_id) == 1
