"""The capability table in brokers/base.py is true, and a missing capability is named."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskwarren.brokers import base, capabilities
from taskwarren.brokers.base import Broker
from taskwarren.brokers.capabilities import Admin, Topology, require
from taskwarren.brokers.memory import MemoryBroker
from taskwarren.brokers.rabbitmq import RabbitMQBroker
from taskwarren.brokers.sqlite import SQLiteBroker
from taskwarren.errors import NotSupportedError
from taskwarren.settings import Settings

BROKERS = ("memory", "sqlite", "rabbitmq")


def documented_table() -> dict[str, dict[str, bool]]:
    """``{capability: {broker: has it}}`` as base.py's docstring draws it."""
    table: dict[str, dict[str, bool]] = {}
    for line in (base.__doc__ or "").splitlines():
        row = re.fullmatch(r"``(\w+)``\s+.*?\s+(yes|no)\s+(yes|no)\s+(yes|no)", line.strip())
        if row:
            table[row[1]] = dict(zip(BROKERS, (v == "yes" for v in row.groups()[1:]),
                                     strict=True))
    return table


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[dict[str, Broker]]:
    made: dict[str, Broker] = {
        "memory": MemoryBroker(),
        "sqlite": SQLiteBroker.from_url(f"sqlite:///{tmp_path / 'q.db'}"),
        # Never connected: building one opens no connection.
        "rabbitmq": RabbitMQBroker(Settings(url="amqp://guest:guest@127.0.0.1:1/%2F")),
    }
    yield made
    for broker in made.values():
        broker.close()


def test_the_documented_table_names_every_capability_protocol() -> None:
    protocols = {name for name, value in vars(capabilities).items()
                 if getattr(value, "_is_runtime_protocol", False)}
    assert set(documented_table()) == protocols


def test_every_broker_and_consumer_has_exactly_the_documented_capabilities(
    brokers: dict[str, Broker],
) -> None:
    for name, documented in documented_table().items():
        protocol = getattr(capabilities, name)
        for kind, broker in brokers.items():
            consumer = broker.consumer()
            try:
                subject = consumer if name in ("EventConsumer", "BroadcastConsumer",
                                               "Announcer") else broker
                assert isinstance(subject, protocol) == documented[kind], (name, kind)
            finally:
                consumer.close()


def test_asking_a_broker_for_a_capability_it_lacks_names_the_broker_and_the_feature() -> None:
    broker = MemoryBroker()
    with pytest.raises(NotSupportedError, match="topology inspection: not supported by the "
                                                "MemoryBroker"):
        require(broker, Topology, "topology inspection")
    assert require(broker, Admin, "queue statistics") is broker
