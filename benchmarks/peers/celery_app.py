"""Celery: the app its worker loads (``celery -A celery_app worker``) and a producer.

Defaults except what the comparison needs: late acks (at-least-once, like the others),
one durable queue of the type asked for, the pyamqp transport. Publisher confirms are
on only in :class:`Producer` (``confirm_publish``), for the confirmed send rows.
"""

from __future__ import annotations

from typing import Any

import marks
from celery import Celery
from kombu import Exchange, Queue

QUEUE = marks.queue_name("twbench_celery_classic")


def make_app(confirm: bool) -> Celery:
    """The Celery app, with publisher confirms when ``confirm``."""
    app = Celery("twbench", broker=marks.url().replace("amqp://", "pyamqp://", 1))
    app.conf.update(
        task_acks_late=True,
        task_default_queue=QUEUE,
        task_queues=[Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE,
                           queue_arguments={"x-queue-type": marks.queue_type()})],
        broker_transport_options={"confirm_publish": confirm},
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="bench.noop", shared=False)
    def noop(sent: float = 0.0) -> None:
        marks.started(sent)

    return app


app = make_app(confirm=False)


class Producer:
    """Sends ``bench.noop`` with ``apply_async``, each publish confirmed."""

    send_many = None  # Celery has no batched send that waits for confirms

    def __init__(self) -> None:
        self.app = make_app(confirm=True)
        self.task: Any = self.app.tasks["bench.noop"]
        self.unconfirmed = make_app(confirm=False)  # only to fill a queue quickly

    def send(self, sent: float) -> None:
        """One confirmed publish."""
        self.task.apply_async((sent,))

    def fill(self, n: int) -> None:
        """Queue ``n`` tasks (untimed)."""
        task = self.unconfirmed.tasks["bench.noop"]
        for _ in range(n):
            task.apply_async((0.0,))

    def close(self) -> None:
        """Close the producer's connections."""
        self.app.close()
        self.unconfirmed.close()
