"""The Celery app the comparison runs: late acks, publisher confirms, defaults otherwise.

``PEER_CELERY_REJECT_ON_LOST=1`` sets ``task_reject_on_worker_lost``.

``celery -A tests.chaos.peers.celery_app worker -P prefork -c 2`` with
``PEER_URL`` set to the broker.
"""

from __future__ import annotations

import os

from celery import Celery

from tests.chaos.peers.ledger import record as _record

QUEUE = "chaos_peer_celery"

app = Celery("chaos_peer", broker=os.environ.get("PEER_URL", "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_acks_late=True,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Celery's default (False) acks a late-ack task whose worker process died.
    task_reject_on_worker_lost=os.environ.get("PEER_CELERY_REJECT_ON_LOST") == "1",
)


@app.task(name="chaos.record", acks_late=True, ignore_result=True)
def record(n: int, ledger: str, sleep_s: float = 0.0) -> None:
    _record(n, ledger, sleep_s)
