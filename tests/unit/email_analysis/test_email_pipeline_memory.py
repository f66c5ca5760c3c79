"""The whole pipeline in one process, on taskwarren's in-memory broker."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("taskwarren")

from taskwarren import Warren
from taskwarren.message import H_ERROR, H_ERROR_TYPE
from taskwarren.testing import join
from workers.email_analysis import tasks
from workers.email_analysis.generate import generate_maildir
from workers.email_analysis.store import SQLiteStore


def test_every_message_is_stored_once_and_an_unreadable_one_is_dead_lettered_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "results.db"))
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(tmp_path / "maildir"))
    app = Warren("memory://")
    ingest = app.task(
        name=tasks.ingest.name,
        queue=tasks.INGEST_QUEUE,
        retries=3,
        dont_retry=tasks.ingest.task_options.dont_retry,
    )(tasks.ingest.fn)
    store_result = app.task(name=tasks.store_result.name, queue=tasks.STORE_QUEUE)(
        tasks.store_result.fn
    )
    monkeypatch.setattr(tasks, "store_result", store_result)  # ingest sends through this app
    written = generate_maildir(tmp_path / "maildir", 25, seed=12)
    calls = [{"path": str(path), "message_id": mid} for path, mid in written]
    calls.append({"path": str(tmp_path / "maildir" / "new" / "gone"), "message_id": "<gone@x>"})

    ingest.send_many(calls)
    ingest.send_many(calls[:5])  # the first five again, as after a redelivery
    join(app, fail_on_error=False)

    with SQLiteStore(tmp_path / "results.db") as results:
        assert results.count() == 25
        assert results.deliveries(written[0][1]) == 2
        assert results.get("<gone@x>") is None
    [dead] = app.broker.dead_letters(tasks.INGEST_QUEUE)
    assert dead.attempt == 0  # never retried
    assert dead.headers[H_ERROR_TYPE].endswith("UnreadableMessageError")
    assert str(dead.headers[H_ERROR]).startswith(f"{tmp_path}/maildir/new/gone: no such file")
    assert app.broker.dead_letters(tasks.STORE_QUEUE) == []
    app.close()
