"""Every contract test runs once per broker: memory, SQLite and RabbitMQ.

RabbitMQ tests skip when the shared broker is unreachable, and fail instead when ``CI``
is set. Their queues have unique names and are deleted afterwards (with ``Q.dead``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.support import KINDS, Harness
from tests.support.rabbit import delete_queues, require_rabbitmq


@pytest.fixture(params=KINDS)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The broker under test, its queue, and helpers to publish and consume."""
    kind: str = request.param
    if kind == "rabbitmq":
        url = require_rabbitmq()
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'contract.db'}"
    else:
        url = "memory://"
    harness = Harness(kind, url)
    try:
        yield harness
    finally:
        harness.close()
        if kind == "rabbitmq":
            delete_queues(harness.queue, url=url)
