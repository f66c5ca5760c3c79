"""Every contract test runs once per broker: memory, SQLite and RabbitMQ.

RabbitMQ tests skip when the shared broker is unreachable, and fail instead when ``CI``
is set. Their queues have unique names and are deleted afterwards (with ``Q.dead``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.support import KINDS, Harness
from tests.support.rabbit import RELEASES, delete_queues, require_rabbitmq, using

#: One parameter per broker, RabbitMQ once per release (``rabbitmq-4.0``).
PARAMS = [f"{kind}-{release}" if kind == "rabbitmq" else kind
          for kind in KINDS for release in (RELEASES if kind == "rabbitmq" else [""])]


@pytest.fixture(params=PARAMS)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The broker under test, its queue, and helpers to publish and consume."""
    kind, _, release = str(request.param).partition("-")
    if kind != "rabbitmq":
        url = f"sqlite:///{tmp_path / 'contract.db'}" if kind == "sqlite" else "memory://"
        harness = Harness(kind, url)
        try:
            yield harness
        finally:
            harness.close()
        return
    with using(RELEASES[release]):
        url = require_rabbitmq()
        harness = Harness(kind, url)
        try:
            yield harness
        finally:
            harness.close()
            delete_queues(harness.queue, *harness.others, url=url)
