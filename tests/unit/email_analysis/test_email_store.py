"""The results store: one row per Message-ID, whatever the number of deliveries."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from workers.email_analysis import store
from workers.email_analysis.analysis import Analysis
from workers.email_analysis.store import (
    PostgresStore,
    SQLiteStore,
    StoreConfigurationError,
    open_store,
)

from .helpers import NOW

PG_URL = os.environ.get("EMAIL_ANALYSIS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _analysis(
    message_id: str, score: int = 10, domain: str = "example.com", **extra: object
) -> Analysis:
    return Analysis(
        message_id=message_id,
        sender_domain=domain,
        score=score,
        reasons=[f"test +{score}"] if score else [],
        analysed_at=NOW,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "results.db") as opened:
        yield opened


def test_the_same_message_id_twice_leaves_one_row_with_the_newer_analysis(
    sqlite_store: SQLiteStore,
) -> None:
    first = _analysis("<a@example.com>", score=10)
    again = first.model_copy(update={"score": 40, "analysed_at": NOW + timedelta(seconds=5)})

    sqlite_store.upsert(first)
    sqlite_store.upsert(again)

    assert sqlite_store.count() == 1
    assert sqlite_store.get("<a@example.com>") == again
    assert sqlite_store.deliveries("<a@example.com>") == 2


def test_a_redelivery_of_the_same_analysis_changes_nothing_but_the_delivery_count(
    sqlite_store: SQLiteStore,
) -> None:
    result = _analysis("<a@example.com>")

    for _ in range(3):
        sqlite_store.upsert(result)

    assert sqlite_store.count() == 1
    assert sqlite_store.get("<a@example.com>") == result
    assert sqlite_store.deliveries("<a@example.com>") == 3


def test_an_older_analysis_never_overwrites_a_newer_one(sqlite_store: SQLiteStore) -> None:
    newer = _analysis("<a@example.com>", score=40)
    older = newer.model_copy(update={"score": 99, "analysed_at": NOW - timedelta(minutes=1)})

    sqlite_store.upsert(newer)
    sqlite_store.upsert(older)

    assert sqlite_store.get("<a@example.com>") == newer
    assert sqlite_store.deliveries("<a@example.com>") == 2


def test_an_unknown_message_id_has_no_result(sqlite_store: SQLiteStore) -> None:
    assert sqlite_store.get("<nope@example.com>") is None
    assert sqlite_store.deliveries("<nope@example.com>") == 0


def test_the_summary_shows_the_score_histogram_top_domains_and_broken_count(
    sqlite_store: SQLiteStore,
) -> None:
    for i, (score, domain, broken) in enumerate(
        [
            (0, "a.example", False),
            (5, "a.example", True),
            (55, "b.example", False),
            (100, "a.example", True),
            (95, "c.example", False),
        ]
    ):
        sqlite_store.upsert(_analysis(f"<{i}@x>", score=score, domain=domain, broken=broken))

    summary = sqlite_store.summary(top=2)

    assert summary.total == 5
    assert summary.broken == 2
    assert summary.mean_score == 51.0
    assert summary.score_histogram == {
        "0-9": 2,
        "10-19": 0,
        "20-29": 0,
        "30-39": 0,
        "40-49": 0,
        "50-59": 1,
        "60-69": 0,
        "70-79": 0,
        "80-89": 0,
        "90-100": 2,
    }
    assert summary.top_sender_domains == [("a.example", 3), ("b.example", 1)]


def test_count_since_counts_only_rows_written_at_or_after_that_time(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.time, "time", lambda: 1000.0)
    sqlite_store.upsert(_analysis("<old@x>"))
    monkeypatch.setattr(store.time, "time", lambda: 2000.0)
    sqlite_store.upsert(_analysis("<new@x>"))

    assert sqlite_store.count() == 2
    assert sqlite_store.count(since=1500.0) == 1
    assert sqlite_store.summary(since=1500.0).total == 1


def test_the_sqlite_database_uses_wal_and_a_busy_timeout(sqlite_store: SQLiteStore) -> None:
    sqlite_store.upsert(_analysis("<a@x>"))

    conn = sqlite_store._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000


def test_email_analysis_db_picks_the_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_DB", str(tmp_path / "env.db"))

    store.upsert(_analysis("<a@x>"))
    store.upsert(_analysis("<a@x>"))

    assert store.count() == 1
    assert store.summary().total == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "env.db")) as conn, conn:
        assert conn.execute("SELECT message_id FROM email_analysis").fetchall() == [("<a@x>",)]
    conn.close()


def test_a_sqlite_url_and_a_plain_path_both_open_sqlite(tmp_path: Path) -> None:
    by_url = open_store(f"sqlite:///{tmp_path / 'u.db'}")
    by_path = open_store(tmp_path / "p.db")

    assert isinstance(by_url, SQLiteStore)
    assert by_url.path == tmp_path / "u.db"
    assert isinstance(by_path, SQLiteStore)


def test_the_default_is_email_analysis_db_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EMAIL_ANALYSIS_DB", raising=False)

    default = open_store()

    assert isinstance(default, SQLiteStore)
    assert default.path == Path("email_analysis.db")


def test_a_postgresql_url_without_psycopg_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)

    with pytest.raises(StoreConfigurationError, match=r"pip install 'psycopg\[binary\]'"):
        open_store("postgresql://postgres@127.0.0.1:5432/test")


def test_a_table_name_that_is_not_plain_sql_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigurationError, match="not a plain SQL table name"):
        SQLiteStore(tmp_path / "x.db", table="results; DROP TABLE x")


def _write_rows(db: str, worker: int, n: int) -> None:
    with SQLiteStore(db) as opened:
        for i in range(n):
            opened.upsert(_analysis(f"<{i}@shared>", score=worker))  # everyone: same ids
            opened.upsert(_analysis(f"<{worker}.{i}@own>"))


def test_several_processes_can_write_to_one_sqlite_file_at_once(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_rows, args=(db, w, 60)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)

    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    with SQLiteStore(db) as opened:
        assert opened.count() == 60 + 4 * 60
        assert opened.deliveries("<0@shared>") == 4


@pytest.fixture
def pg_store() -> Iterator[PostgresStore]:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no PostgreSQL at {PG_URL} under CI: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc}")
    table = f"email_analysis_test_{uuid.uuid4().hex[:8]}"
    opened = PostgresStore(PG_URL, table=table)
    try:
        yield opened
    finally:
        opened._connection().execute(f"DROP TABLE IF EXISTS {table}")
        opened.close()


def test_postgresql_upserts_by_message_id_too(pg_store: PostgresStore) -> None:
    first = _analysis("<a@example.com>", score=10, subject="nul \x00 removed")
    again = first.model_copy(update={"score": 40, "analysed_at": NOW + timedelta(seconds=5)})

    pg_store.upsert(first)
    pg_store.upsert(again)
    pg_store.upsert(first)  # older: kept out

    assert pg_store.count() == 1
    assert pg_store.deliveries("<a@example.com>") == 3
    stored = pg_store.get("<a@example.com>")
    assert stored is not None
    assert stored.score == 40
    assert stored.subject == "nul  removed"
    assert pg_store.summary().score_histogram["40-49"] == 1
