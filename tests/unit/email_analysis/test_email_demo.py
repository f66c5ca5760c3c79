"""The demo's command line and report (the full run is an integration test)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from workers.email_analysis.demo import (
    REPO_ROOT,
    DemoSummary,
    _worker_env,
    demo_command,
    format_summary,
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
