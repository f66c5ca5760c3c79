"""Subscriber and broadcast tasks the event integration tests run in real worker pools.

Queue names and subscriptions are built from ``TWTEST_EVENTS`` so that every test
has its own queues and routing keys on the shared broker (the events exchange is shared).
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from taskwarren import Backoff, task
from tests.integration.twtasks import _mark

#: This test's unique word: queues are ``PREFIX-logs`` etc., routing keys ``PREFIX.*``.
PREFIX = os.environ.get("TWTEST_EVENTS", "twtest-events")
LOGS = f"{PREFIX}-logs"
ALERTS = f"{PREFIX}-alerts"
CONTROL = f"{PREFIX}-control"


class Note(BaseModel):
    """The event the tests publish."""

    n: int
    ledger: str
    fail: bool = False


@task(queue=LOGS, subscribe=[f"{PREFIX}.#"])
def log_everything(event: Note) -> None:
    """Record every event of this test."""
    _mark(event.ledger, "logs", event.n)


@task(queue=ALERTS, subscribe=[f"{PREFIX}.audit.*"], retries=1,
      backoff=Backoff(base_s=1, max_s=1, min_s=1))
def alert(event: Note) -> None:
    """Record audit events; fail (retried once, then dead-lettered) when asked to."""
    _mark(event.ledger, "alerts", event.n)
    if event.fail:
        raise RuntimeError(f"alert {event.n} failed on purpose")


@task(queue=CONTROL, broadcast=True)
def reload_rules(version: int, ledger: str) -> None:
    """Record which process ran which version."""
    _mark(ledger, "reload", version)
