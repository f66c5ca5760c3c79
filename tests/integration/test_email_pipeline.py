"""The email analysis pipeline end to end: a real worker pool on the real RabbitMQ."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.message import H_ERROR, H_ERROR_TYPE
from tests.support.rabbit import delete_queues
from tests.support.workers import Pool, wait_until
from workers.email_analysis import tasks
from workers.email_analysis.analysis import analyse
from workers.email_analysis.demo import run_demo
from workers.email_analysis.generate import generate_messages
from workers.email_analysis.store import SQLiteStore

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
MODULE = "workers.email_analysis.tasks"


def test_the_demo_stores_one_analysis_per_generated_message(
    rabbit_url: str, tmp_path: Path
) -> None:
    lines: list[str] = []

    summary = run_demo(
        80, 2, rabbit_url, tmp_path, progress=False, seed=5, stall_timeout=60, echo=lines.append
    )

    expected = list(generate_messages(80, seed=5))
    assert (summary.sent, summary.stored, summary.failed) == (80, 80, 0)
    assert summary.worker_exit_code == 0
    assert summary.broken == sum(1 for m in expected if m.broken)
    assert summary.messages_per_second > 0
    assert any(line.startswith("messages/s") for line in lines)
    with SQLiteStore(tmp_path / "email_analysis.db") as results:
        assert results.count() == 80
        for message in expected[:10]:
            stored = results.get(message.message_id)
            # The demo delivers over SMTP: the ingress stores the message as it came on
            # the wire, with CRLF line ends.
            direct = analyse(re.sub(rb"\r?\n", b"\r\n", message.raw), message.message_id)
            assert stored is not None
            assert (stored.score, stored.reasons, stored.broken) == (
                direct.score,
                direct.reasons,
                direct.broken,
            )


def test_an_unreadable_file_goes_to_the_dead_letter_queue_with_the_reason_untried_again(
    rabbit_url: str, tmp_path: Path
) -> None:
    queue = f"twtest-email-{uuid.uuid4().hex[:8]}"
    app = Warren(rabbit_url)
    ingest = app.task(name=tasks.ingest.name, queue=queue)(tasks.ingest.fn)
    missing = tmp_path / "maildir" / "new" / "gone"
    task_id = ingest.send(path=str(missing), message_id="<gone@example.com>")
    pool = Pool(
        MODULE,
        [queue],
        rabbit_url,
        concurrency=1,
        env={"EMAIL_ANALYSIS_DB": str(tmp_path / "results.db"),
             "EMAIL_ANALYSIS_MAILDIR": str(tmp_path / "maildir")},
        log_path=tmp_path / "worker.log",
    )
    try:
        wait_until(lambda: app.broker.stats(queue).dead == 1, timeout=60, what="a dead letter")
        [dead] = app.broker.dead_letters(queue)
    finally:
        assert pool.stop() == 0
        app.close()
        delete_queues(queue, url=rabbit_url)

    assert dead.message_id == task_id
    assert dead.attempt == 0  # never retried
    assert dead.headers[H_ERROR_TYPE].endswith("UnreadableMessageError")
    assert f"{missing}: no such file" in str(dead.headers[H_ERROR])
