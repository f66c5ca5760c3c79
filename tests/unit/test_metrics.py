"""Prometheus metrics: labels stay few whatever the messages say."""

from __future__ import annotations

from prometheus_client import REGISTRY
from pydantic import BaseModel

from taskwarren import Warren
from taskwarren.middleware.metrics import PrometheusMetrics

CONFIRMS = "taskwarren_publish_confirm_seconds_count"


class Placed(BaseModel):
    order: int


def confirms(queue: str) -> float:
    return REGISTRY.get_sample_value(CONFIRMS, {"queue": queue}) or 0.0


def test_events_and_broadcasts_are_timed_under_one_fixed_queue_label_each() -> None:
    app = Warren(url="memory://")
    app.add_middleware(PrometheusMetrics(app))

    @app.task(queue="orders", subscribe=["order.#"])
    def on_order(event: Placed) -> None: ...

    @app.task(queue="control", broadcast=True)
    def reload_rules(version: int) -> None: ...

    events, broadcasts = confirms("taskwarren.events"), confirms("taskwarren.broadcasts")
    for order in range(3):
        app.publish_event(f"order.{order}.created", Placed(order=order))
    reload_rules.send(1)
    # A routing key carries ids: as a label it would add one series per order.
    assert all(confirms(f"order.{order}.created") == 0 for order in range(3))
    assert confirms("taskwarren.events") == events + 3
    assert confirms("taskwarren.broadcasts") == broadcasts + 1
    app.close()
