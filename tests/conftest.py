"""Shared fixtures. The default app used by test task modules talks to the test broker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.rabbit import amqp_url, delete_queues, require_rabbitmq, unique_queue
from tests.support.workers import Ledger

os.environ.setdefault("TASKWARREN_URL", amqp_url())


@pytest.fixture
def rabbit_url() -> str:
    """The shared RabbitMQ; skips without one (fails under CI)."""
    return require_rabbitmq()


@pytest.fixture
def queue(rabbit_url: str) -> Iterator[str]:
    """A fresh queue name on the shared broker, deleted afterwards."""
    name = unique_queue()
    yield name
    delete_queues(name, url=rabbit_url)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """A ledger file that test tasks append to."""
    return Ledger(tmp_path / "ledger.txt")
