"""Job event messages: what :func:`encode_events` writes and :func:`decode_events` reads."""

from __future__ import annotations

import json

from taskwarren.store.jobs import JOB_EVENTS_QUEUE, JobEvent, decode_events, encode_events


def test_events_come_back_as_they_were_sent() -> None:
    events = [
        JobEvent("a", "queued", 1.5, task="shop.ship", queue="q", created_at=1.5,
                 args='{"n": 1}'),
        JobEvent("b", "dead", 2.25, task="shop.ship", queue="q", epoch=2, attempt=3,
                 created_at=1.0, started_at=2.0, worker="host:1", duration_s=0.0,
                 error="ValueError: no", traceback="Traceback ..."),
    ]
    envelope = encode_events(events)
    assert envelope.queue == JOB_EVENTS_QUEUE
    assert decode_events(envelope.body) == events


def test_an_event_message_leaves_out_empty_fields_but_keeps_zeros() -> None:
    body = encode_events([JobEvent("a", "succeeded", 3.0, task="t", duration_s=0.0)]).body
    assert json.loads(body) == [{"task_id": "a", "state": "succeeded", "at": 3.0, "task": "t",
                                 "epoch": 0, "attempt": 0, "duration_s": 0.0}]
