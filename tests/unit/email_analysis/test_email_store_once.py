"""An ingress message's analysis is stored once, on every results backend.

The store's side of "analysed exactly once": the ingress recorded the message
(``email_ingress``); the first analysis marks it analysed and upserts in one transaction,
a redelivered one (the broker is at-least-once) finds the mark and writes nothing. Runs
on SQLite, and on the machine's MariaDB and PostgreSQL (each a fresh database).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from taskwarren import Warren
from tests.support.databases import fresh_database
from workers.email_analysis.analysis import Analysis
from workers.email_analysis.intake import Intake, identify
from workers.email_analysis.store import ResultStore, UnknownIngressMessageError, open_store

from .helpers import NOW

RAW = b"Message-ID: <once@example.com>\r\nFrom: a@example.com\r\n\r\nbody\r\n"


@pytest.fixture(params=["sqlite", "mysql", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def results(db_url: str, tmp_path: Path) -> Iterator[ResultStore]:
    intake = Intake(db_url, Warren("memory://", store_url=db_url, jobs=True))
    intake.prepare()
    first, second = tmp_path / "1", tmp_path / "2"
    first.write_bytes(RAW)  # a duplicate is one whose recorded file is still there
    second.write_bytes(RAW)
    try:
        assert intake.accept(identify(RAW), first, len(RAW)) is True
        assert intake.accept(identify(RAW), second, len(RAW)) is False
    finally:
        intake.close()
    target = db_url.removeprefix("sqlite:///")
    with open_store(target if db_url.startswith("sqlite") else db_url) as opened:
        yield opened


def _analysis(score: int, later_s: float = 0.0) -> Analysis:
    return Analysis(message_id="<once@example.com>", sender_domain="example.com", score=score,
                    reasons=[], analysed_at=NOW + timedelta(seconds=later_s))


def test_the_first_analysis_of_an_accepted_message_is_stored_and_a_redelivery_is_not(
        results: ResultStore) -> None:
    key = identify(RAW).key

    first = results.upsert_once(_analysis(40), key)
    again = results.upsert_once(_analysis(90, later_s=5), key)

    assert (first, again) == (True, False)
    stored = results.get("<once@example.com>")
    assert stored is not None and stored.score == 40
    assert results.deliveries("<once@example.com>") == 1


def test_an_analysis_for_a_message_the_ingress_never_accepted_fails_loudly_unstored(
        results: ResultStore) -> None:
    # Workers whose EMAIL_ANALYSIS_DB is not the ingress's database: the task fails (and
    # is retried, then dead-lettered with this reason), never drops the result silently.
    with pytest.raises(UnknownIngressMessageError, match="EMAIL_ANALYSIS_DB"):
        results.upsert_once(_analysis(40), "0" * 64)
    assert results.get("<once@example.com>") is None


def test_another_message_reusing_the_message_id_gets_a_row_of_its_own(
        results: ResultStore, db_url: str, tmp_path: Path) -> None:
    other = RAW.replace(b"body", b"another body")
    intake = Intake(db_url, Warren("memory://", store_url=db_url, jobs=True))
    (tmp_path / "3").write_bytes(other)
    try:
        assert intake.accept(identify(other), tmp_path / "3", len(other)) is True
    finally:
        intake.close()
    first_key, other_key = identify(RAW).key, identify(other).key

    assert results.upsert_once(_analysis(40), first_key) is True
    assert results.upsert_once(_analysis(90, later_s=5), other_key) is True

    first = results.get("<once@example.com>")
    assert first is not None and first.score == 40  # not replaced
    row = results.row_id("<once@example.com>", other_key)
    assert row == "<once@example.com> #" + other_key[:32]
    second = results.get(row)
    assert second is not None and second.score == 90
    assert second.message_id == "<once@example.com>"  # the analysis is as it came
    assert results.count() == 2
