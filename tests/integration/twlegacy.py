"""A team's migration module: tasks, and the jobs table their code still INSERTs into.

``taskwarren relay --legacy tests.integration.twlegacy:JOBS`` relays the table;
``taskwarren worker tests.integration.twlegacy`` runs the tasks. The queue comes from
``TWLEGACY_QUEUE`` so that each test has its own.
"""

from __future__ import annotations

import os
import time

from taskwarren import task
from taskwarren.store.legacy import LegacyTable

QUEUE = os.environ.get("TWLEGACY_QUEUE", "twlegacy")

JOBS = LegacyTable(
    "jobs", task="type", args="payload", status="status", pending="pending",
    done="queued", failed="failed", error="last_error", run_at="run_at",
    task_names={"welcome_email": "send_welcome_email"})


@task(name="send_welcome_email", queue=QUEUE)
def send_welcome_email(user_id: int, ledger: str) -> None:
    """Record that user ``user_id`` was welcomed (one O_APPEND write)."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"end {user_id} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
