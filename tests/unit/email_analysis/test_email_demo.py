"""The demo's command line and report (the full run is an integration test)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskwarren.cli import main as taskwarren_main
from workers.email_analysis.demo import (
    REPO_ROOT,
    DemoSummary,
    _worker_env,
    demo_command,
    format_summary,
    run_demo,
)
from workers.email_analysis.store import StoreSummary


def test_the_demo_command_offers_messages_concurrency_url_and_workdir() -> None:
    result = CliRunner().invoke(demo_command, ["--help"])

    assert result.exit_code == 0
    for option in ("-n, --messages", "-c, --concurrency", "--url", "--workdir"):
        assert option in result.output
    assert "2000; x>=1]" in result.output  # the default number of messages


def test_the_report_shows_rate_histogram_domains_and_failures(tmp_path: Path) -> None:
    overview = StoreSummary(
        total=98,
        broken=7,
        mean_score=21.5,
        score_histogram={
            "0-9": 60,
            "10-19": 20,
            "20-29": 0,
            "30-39": 0,
            "40-49": 0,
            "50-59": 0,
            "60-69": 0,
            "70-79": 8,
            "80-89": 0,
            "90-100": 10,
        },
        top_sender_domains=[("example.com", 40), ("bank.example", 12)],
    )
    summary = DemoSummary(
        messages=100,
        sent=100,
        stored=98,
        failed=2,
        dead_lettered=2,
        broken=7,
        seconds=4.0,
        messages_per_second=24.5,
        generate_seconds=0.1,
        send_seconds=0.2,
        worker_exit_code=0,
        broker="memory://",
        results_db="r.db",
        workdir=tmp_path,
        summary=overview,
    )

    report = format_summary(summary)

    assert "messages        100 (sent 100, stored 98)" in report
    assert "messages/s      24.5" in report
    assert "broken          7 (analysed and marked)" in report
    assert "failed          2 not stored (2 dead-lettered)" in report
    assert "     0-9      60  " + "#" * 40 in report
    assert "      40  example.com" in report
    assert summary.ok is False


def test_the_worker_pool_gets_the_broker_url_the_results_db_the_maildir_and_the_repo_on_its_path(
) -> None:
    env = _worker_env("amqp://guest:guest@127.0.0.1:5672/%2F", "/tmp/r.db", "/tmp/maildir")

    assert env["TASKWARREN_URL"] == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert env["EMAIL_ANALYSIS_DB"] == "/tmp/r.db"
    assert env["EMAIL_ANALYSIS_MAILDIR"] == "/tmp/maildir"
    assert env["PYTHONPATH"].split(":")[0] == str(REPO_ROOT)
    assert (REPO_ROOT / "workers" / "email_analysis" / "tasks.py").is_file()


@pytest.mark.timeout(180)
def test_the_demo_on_the_embedded_broker_delivers_through_the_ingress_and_every_job_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh machine: no broker and no store configured (what `make demo` runs).
    monkeypatch.delenv("TASKWARREN_URL", raising=False)
    monkeypatch.delenv("TASKWARREN_STORE_URL", raising=False)
    lines: list[str] = []

    summary = run_demo(40, 1, None, tmp_path, progress=False, seed=3, echo=lines.append)

    assert (summary.sent, summary.stored, summary.failed, summary.worker_exit_code) == (
        40, 40, 0, 0)
    assert any(line.startswith("demo: 40 messages accepted over SMTP") for line in lines)
    assert len(list((tmp_path / "maildir" / "new").iterdir())) == 40
    db = tmp_path / "email_analysis.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("SELECT COUNT(analysed_at) FROM email_ingress").fetchone() == (40,)
        assert conn.execute("SELECT MAX(deliveries) FROM email_analysis").fetchone() == (1,)
    # `taskwarren jobs` shows each message's analysis (the projector may trail the result).
    deadline = time.monotonic() + 30
    while True:
        listed = CliRunner().invoke(taskwarren_main, [
            "jobs", "list", "--store-url", f"sqlite:///{db}", "--task",
            "workers.email_analysis.tasks.ingest", "--json"])
        assert listed.exit_code == 0, listed.output
        states = [job["state"] for job in json.loads(listed.output)]
        if states.count("succeeded") == 40 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == ["succeeded"] * 40
