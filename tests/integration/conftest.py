"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskwarren.store import Store, open_store
from tests.support.rabbit import PrivateRabbit, Release, require_rabbitmq


@pytest.fixture(scope="module")
def node(rabbit_release: Release) -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the module's own, of the release under test: its tests may
    restart it or raise resource alarms on it (never on the shared broker)."""
    require_rabbitmq()
    rabbit = PrivateRabbit(release=rabbit_release)
    rabbit.start()
    yield rabbit
    rabbit.stop()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """The job store at ``store_url``, its tables made, closed afterwards."""
    s = open_store(store_url)
    s.init()
    yield s
    s.close()
