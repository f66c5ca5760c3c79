"""Tasks of the browser tests: a shop whose carrier is down for some orders, and a hostile task.

``taskwarren worker`` and ``taskwarren web`` load this module (its :data:`app` takes its
settings from the environment, as a user's app does); the tests register the same tasks
on an app of their own with :func:`register` to send them.

``ship_order`` fails while a marker file ``order-<id>`` exists in ``TW_BROWSER_MARKERS``
(so a test decides which orders fail, and lets them succeed by deleting the file), and
writes ``shipped-<id>`` there when it succeeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from taskwarren import Warren
from taskwarren.task import Task

#: A hostile text: the name of a task, and its error.
SCRIPT = "<script>alert(1)</script>"
#: The queue of the shop's tasks, and that of the hostile one.
QUEUE = "shop"
HOSTILE_QUEUE = "inbox"


def markers() -> Path:
    """The directory of the marker files (``TW_BROWSER_MARKERS``)."""
    return Path(os.environ["TW_BROWSER_MARKERS"])


def ship_order(order_id: int, carrier: str = "parcelway") -> None:
    """Ship an order; fails while its marker file exists."""
    if (markers() / f"order-{order_id}").exists():
        raise RuntimeError(f"{carrier} API answered 503 for order {order_id}")
    (markers() / f"shipped-{order_id}").touch()


def send_receipt(order_id: int) -> None:
    """Nothing to do: a task that always succeeds."""


def parse_mail(note: str) -> None:
    """Fail with an error text that is markup."""
    raise ValueError(SCRIPT)


def sync_stock(scheduled_at: datetime) -> None:
    """A schedule, so that the schedules page has one (weekly: no tick fires while the
    tests count jobs)."""


@dataclass(frozen=True)
class Shop:
    """The tasks, as registered on one app."""

    ship_order: Task[..., None]
    send_receipt: Task[..., None]
    hostile: Task[..., None]
    sync_stock: Task[..., None]


def register(app: Warren) -> Shop:
    """Register the tasks on ``app`` (retries=0: a failure is dead at once)."""
    return Shop(
        ship_order=app.task(name="shop.ship_order", queue=QUEUE, retries=0)(ship_order),
        send_receipt=app.task(name="shop.send_receipt", queue=QUEUE)(send_receipt),
        hostile=app.task(name=SCRIPT, queue=HOSTILE_QUEUE, retries=0)(parse_mail),
        sync_stock=app.task(name="shop.sync_stock", queue=QUEUE,
                            cron="0 6 * * mon")(sync_stock),
    )


app = Warren()
shop = register(app)
