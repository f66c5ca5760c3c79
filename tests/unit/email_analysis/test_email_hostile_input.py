"""A task message is hostile input: its path, file names and headers cost a bounded effort."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from taskwarren.testing import InMemory
from workers.email_analysis import tasks
from workers.email_analysis.analysis import _ADDRESS, Analysis, analyse
from workers.email_analysis.files import UnreadableMessageError, read_message_file

fork = multiprocessing.get_context("fork")
MESSAGE = b"From: a@example.com\nSubject: hi\n\nhello\n"


@pytest.fixture
def maildir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "maildir"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    monkeypatch.setenv("EMAIL_ANALYSIS_MAILDIR", str(root))
    return root


@pytest.fixture
def stored(
    monkeypatch: pytest.MonkeyPatch, taskwarren_memory: InMemory
) -> Callable[[], list[Analysis]]:
    """Runs what ingest sent (on the in-memory broker); the analyses that reached the store."""
    analyses: list[Analysis] = []
    monkeypatch.setattr(tasks.store, "upsert", analyses.append)

    def run() -> list[Analysis]:
        taskwarren_memory.run()
        return analyses

    return run


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.eml"
    secret.write_bytes(b"From: boss@example.com\nSubject: the keys\n\nhunter2\n")
    return secret


def test_ingest_reads_a_message_below_the_maildir(
    maildir: Path, stored: Callable[[], list[Analysis]]
) -> None:
    (maildir / "new" / "1.host").write_bytes(MESSAGE)

    tasks.ingest.run_now(path=str(maildir / "new" / "1.host"), message_id="<1@x>")
    tasks.ingest.run_now(path="new/1.host", message_id="<1@x>")  # relative to the maildir

    assert [analysis.subject for analysis in stored()] == ["hi", "hi"]


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink", "symlinked directory"])
def test_ingest_refuses_a_file_outside_the_maildir(
    maildir: Path, tmp_path: Path, stored: Callable[[], list[Analysis]], how: str
) -> None:
    secret = _secret(tmp_path)
    if how == "absolute":
        path = str(secret)
    elif how == "dot-dot":
        path = str(maildir / "new" / ".." / ".." / "secret.eml")
    elif how == "symlink":
        (maildir / "new" / "2.host").symlink_to(secret)
        path = str(maildir / "new" / "2.host")
    else:
        (maildir / "new" / "sub").symlink_to(tmp_path)
        path = str(maildir / "new" / "sub" / "secret.eml")

    with pytest.raises(UnreadableMessageError, match="outside the maildir"):
        tasks.ingest.run_now(path=path, message_id="<2@x>")
    assert stored() == []


def test_ingest_without_a_maildir_configured_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stored: Callable[[], list[Analysis]]
) -> None:
    monkeypatch.delenv("EMAIL_ANALYSIS_MAILDIR", raising=False)

    with pytest.raises(UnreadableMessageError, match="EMAIL_ANALYSIS_MAILDIR is not set"):
        tasks.ingest.run_now(path=str(_secret(tmp_path)), message_id="<3@x>")
    assert stored() == []


def test_a_star_in_a_file_name_does_not_match_another_message(maildir: Path) -> None:
    (maildir / "cur" / "1767571200.S1I1.host:2,S").write_bytes(b"Subject: someone else's\n\n")

    for name in ("1767571200.*", "*", "1767571200.S1I1.hos?", "[1]767571200.S1I1.host"):
        with pytest.raises(UnreadableMessageError, match="no such file"):
            read_message_file(maildir / "new" / name)
        with pytest.raises(UnreadableMessageError, match="no such file"):
            tasks.ingest.run_now(path=str(maildir / "new" / name), message_id="<4@x>")


def _timed(work: Callable[[], object], report: Connection) -> None:
    started = time.perf_counter()
    work()
    report.send(time.perf_counter() - started)


def _seconds(work: Callable[[], object], limit_s: float) -> float:
    """How long ``work`` takes in a child process; infinite past ``limit_s`` (it is killed).

    A child, because a regular expression holds the GIL: a runaway one in this process
    would also stop the test's own clock.
    """
    receive, report = fork.Pipe(duplex=False)
    child = fork.Process(target=_timed, args=(work, report), daemon=True)
    child.start()
    try:
        return float(receive.recv()) if receive.poll(limit_s) else float("inf")
    finally:
        if child.is_alive():
            assert child.pid is not None
            os.kill(child.pid, 9)
        child.join()


def _linear_reference(text: str) -> Callable[[], object]:
    return lambda: [text.count(c) for c in "@<>()[],;:\" \t"]


def test_finding_addresses_in_a_megabyte_without_an_at_sign_takes_linear_time() -> None:
    text = "x" * 1_000_000
    bound = 50 * _seconds(_linear_reference(text), 60) + 0.5

    # A quadratic search takes hours here (8,000 characters took 0.19 s).
    assert _seconds(lambda: _ADDRESS.findall(text), bound + 5) < bound
    assert _ADDRESS.findall("x" * 1000 + " bob@example.com, y@z") == ["bob@example.com"]


@pytest.mark.parametrize("unit", ["x", "x ", '"', ",", "\\"])
def test_a_megabyte_from_header_is_analysed_about_as_fast_as_a_megabyte_body(unit: str) -> None:
    big_from = b"From: " + unit.encode() * (1_000_000 // len(unit)) + b"\nSubject: hi\n\nx\n"
    big_body = b"From: a@example.com\nSubject: hi\n\n" + b"hello world\n" * 83_000
    bound = 5 * _seconds(lambda: analyse(big_body, "<ref@x>"), 60) + 1

    assert _seconds(lambda: analyse(big_from, "<big@x>"), bound + 5) < bound
    result = analyse(big_from, "<big@x>")
    assert result.sender is None
    assert result.broken
