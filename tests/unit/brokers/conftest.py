"""Fixtures of the broker unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskwarren import Warren


@pytest.fixture
def app(rabbit_url: str, queue: str) -> Iterator[Warren]:
    """An app on the shared RabbitMQ with one task, ``brokers.noop``, on ``queue``, whose
    messages the tests consume themselves."""
    warren = Warren(url=rabbit_url, queue_type="classic")

    @warren.task(queue=queue, name="brokers.noop")
    def noop(n: int) -> None:
        """Never runs: the test consumes its messages itself."""

    yield warren
    warren.close()
