"""Shared fixtures. The default app used by test task modules talks to the test broker.

Every test that needs RabbitMQ (marked ``rabbitmq``, or using one of the fixtures
below) runs once per release in ``tests.support.rabbit.RELEASES``; the parameter is
session-scoped, so pytest runs all tests of one release before it moves to the next.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import DIALECTS, fresh_database
from tests.support.rabbit import (
    RELEASES,
    Release,
    amqp_url,
    delete_queues,
    require_rabbitmq,
    unique_queue,
    using,
)
from tests.support.workers import Ledger

os.environ.setdefault("TASKWARREN_URL", amqp_url())

# The plugin users get through its entry point; named here too so that a run from a
# checkout whose install predates the entry point has it. Registered under the entry
# point's own name, it is loaded once either way.
pytest_plugins = ["taskwarren.pytest_plugin"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each RabbitMQ test against every release (``@pytest.mark.rabbitmq(releases=
    ("3.10",))``: only those of the listed releases that are under test)."""
    wants = "rabbit_release" in metafunc.fixturenames
    marker = metafunc.definition.get_closest_marker("rabbitmq")
    if wants or marker is not None:
        if not wants:
            metafunc.fixturenames.append("rabbit_release")
        only = marker.kwargs.get("releases") if marker is not None else None
        names = [r for r in RELEASES if only is None or r in only]
        # No listed release under test: pytest's "empty parameter set" skip, with no
        # rabbitmq-<release> id (so -k rabbitmq-4.0 leaves it out).
        metafunc.parametrize("rabbit_release", [RELEASES[r] for r in names], indirect=True,
                             scope="session", ids=[f"rabbitmq-{r}" for r in names])


@pytest.fixture(scope="session")
def rabbit_release(request: pytest.FixtureRequest) -> Iterator[Release]:
    """The RabbitMQ release under test; its shared node becomes the tests' broker."""
    with using(request.param) as release:
        yield release


@pytest.fixture
def rabbit_url(rabbit_release: Release) -> str:
    """The shared RabbitMQ of the release under test; skips without one (fails under CI)."""
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


@pytest.fixture(params=DIALECTS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty job store database: SQLite, PostgreSQL, MariaDB."""
    with fresh_database(request.param, tmp_path) as url:
        yield url
