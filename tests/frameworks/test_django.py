"""``db=django.db.connection`` inside ``transaction.atomic()``, on real Django with SQLite
and PostgreSQL, and the worker middleware that closes stale connections (an async
task's too, on asgiref's thread-sensitive thread).

Django is configured once for this process (two databases: ``default`` on SQLite,
``pg`` on a fresh PostgreSQL database), without touching logging. The relay publishes
to the in-memory broker, where the app's tasks run as a worker runs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections, transaction

from taskwarren import Warren
from taskwarren.contrib.django.middleware import CloseOldConnections
from taskwarren.relays import relay_for
from taskwarren.store import Store, open_store
from taskwarren.store.schema import OUTBOX
from taskwarren.testing import in_memory
from tests.support.databases import fresh_database

ALIASES = ("default", "pg")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Store]]:
    """Django set up on both databases, taskwarren's tables made in each; their stores."""
    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('django') / 'app.db'}"
    with fresh_database("postgresql", Path()) as pg_url:
        pg = urlsplit(pg_url)
        if not settings.configured:
            settings.configure(
                DATABASES={
                    "default": {"ENGINE": "django.db.backends.sqlite3",
                                "NAME": sqlite_url.removeprefix("sqlite:///")},
                    "pg": {"ENGINE": "django.db.backends.postgresql",
                           "NAME": pg.path.lstrip("/"), "USER": pg.username, "HOST": pg.hostname,
                           "PORT": pg.port},
                },
                INSTALLED_APPS=["taskwarren.contrib.django"], USE_TZ=True, LOGGING_CONFIG=None)
            django.setup()
        opened = {"default": open_store(sqlite_url), "pg": open_store(pg_url)}
        for alias, store in opened.items():
            store.init()
            with connections[alias].cursor() as cur:
                cur.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        try:
            yield opened
        finally:
            connections.close_all()
            for store in opened.values():
                store.close()


class Shop:
    """An application whose task records the orders it was sent."""

    def __init__(self) -> None:
        self.app = Warren("memory://")
        self.ran: list[int] = []

        def confirm(order_id: int) -> None:
            self.ran.append(order_id)

        self.confirm = self.app.task(confirm, name="shop.confirm", queue="shop")

    def relay_and_run(self, store: Store) -> list[int]:
        """Relay what the outbox holds, then run it; every order confirmed so far."""
        with in_memory(self.app) as queues:
            relay = relay_for(self.app, store)
            while relay.relay_once():
                pass
            queues.run()
        return sorted(self.ran)


@pytest.fixture(params=ALIASES)
def alias(request: pytest.FixtureRequest, stores: dict[str, Store]) -> Iterator[str]:
    """A database alias, its orders table and outbox empty."""
    with connections[request.param].cursor() as cur:
        cur.execute("DELETE FROM orders")
        cur.execute(f"DELETE FROM {OUTBOX}")
    yield request.param


def _db(alias: str) -> Any:
    """What an application passes as ``db=``: ``django.db.connection`` for the default."""
    return connection if alias == "default" else connections[alias]


def _orders(alias: str) -> list[int]:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT id FROM orders ORDER BY id")
        return [row[0] for row in cur.fetchall()]


def _place(alias: str, shop: Shop, order_id: int) -> None:
    with connections[alias].cursor() as cur:
        cur.execute("INSERT INTO orders (id) VALUES (%s)", [order_id])
    shop.confirm.options(db=_db(alias)).send(order_id)


class Refused(Exception):
    """Raised inside an atomic block to roll it back."""


def test_a_rolled_back_atomic_block_sends_nothing_and_a_committed_one_sends_exactly_once(
    alias: str, stores: dict[str, Store]
) -> None:
    shop = Shop()
    with pytest.raises(Refused), transaction.atomic(using=alias):
        _place(alias, shop, 1)
        raise Refused
    with transaction.atomic(using=alias):
        _place(alias, shop, 2)

    assert shop.relay_and_run(stores[alias]) == [2]
    assert shop.relay_and_run(stores[alias]) == [2]  # nothing left to send again
    assert _orders(alias) == [2]
    assert stores[alias].counts() == (0, 0)


def test_a_send_in_a_savepoint_that_rolls_back_is_dropped_with_it(
    alias: str, stores: dict[str, Store]
) -> None:
    shop = Shop()
    with transaction.atomic(using=alias):
        _place(alias, shop, 1)
        with pytest.raises(Refused), transaction.atomic(using=alias):
            _place(alias, shop, 2)
            raise Refused
        _place(alias, shop, 3)

    assert shop.relay_and_run(stores[alias]) == [1, 3]
    assert _orders(alias) == [1, 3]


def test_a_send_waits_unseen_by_the_relay_until_the_block_commits(
    alias: str, stores: dict[str, Store]
) -> None:
    shop = Shop()
    with transaction.atomic(using=alias):
        _place(alias, shop, 5)
        assert relay_for(shop.app, stores[alias]).relay_once() == 0

    assert shop.relay_and_run(stores[alias]) == [5]


def test_a_send_outside_an_atomic_block_is_refused_and_writes_nothing(
    alias: str, stores: dict[str, Store]
) -> None:
    shop = Shop()

    with pytest.raises(TypeError, match=r"outside transaction\.atomic\(\)"):
        shop.confirm.options(db=_db(alias)).send(9)

    assert stores[alias].counts() == (0, 0)
    assert shop.relay_and_run(stores[alias]) == []


@pytest.mark.parametrize("with_middleware", [True, False])
def test_the_middleware_closes_the_connection_a_task_opened_as_a_request_end_would(
    stores: dict[str, Store], with_middleware: bool
) -> None:
    app = Warren("memory://")
    if with_middleware:
        app.add_middleware(CloseOldConnections())

    @app.task(queue="django.count")
    def count_orders() -> int:
        return len(_orders("pg"))

    connections["pg"].close()
    with in_memory(app) as queues:
        count_orders.send()
        [result] = queues.run()

    assert result.outcome == "succeeded"
    # CONN_MAX_AGE is 0, as by default: Django would close it when a request ends.
    assert (connections["pg"].connection is None) is with_middleware
    connections["pg"].close()


def _on_the_orm_thread(fn: Any) -> Any:
    """Run ``fn`` where an async task's ORM calls run: asgiref's thread-sensitive thread
    (its calls run one at a time, in the order they were queued)."""
    return asyncio.run(sync_to_async(fn, thread_sensitive=True)())


@pytest.mark.parametrize("with_middleware", [True, False])
def test_the_middleware_closes_the_connection_an_async_task_opened_on_the_orm_thread(
    stores: dict[str, Store], with_middleware: bool
) -> None:
    app = Warren("memory://")
    if with_middleware:
        app.add_middleware(CloseOldConnections())

    @app.task(queue="django.acount")
    async def count_orders() -> int:
        # What Django's async ORM (Model.objects.acount()) does.
        counted: int = await sync_to_async(lambda: len(_orders("pg")), thread_sensitive=True)()
        return counted

    _on_the_orm_thread(lambda: connections["pg"].close())
    with in_memory(app) as queues:
        count_orders.send()
        [result] = queues.run()

    assert result.outcome == "succeeded"
    assert _on_the_orm_thread(lambda: connections["pg"].connection is None) is with_middleware
    _on_the_orm_thread(lambda: connections["pg"].close())
