"""Prometheus metrics of a worker pool, aggregated over its child processes.

Uses prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set
before ``prometheus_client`` is first imported in the pool (``taskwarren worker
--metrics-port`` does it), and the supervisor serves the aggregate.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from taskwarren.app import Warren
from taskwarren.middleware import Middleware

#: Histogram buckets for task durations, in seconds (microsecond tasks to hours).
DURATION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 7200)

TASKS = Counter("taskwarren_tasks", "Tasks run, by outcome.", ["task", "queue", "outcome"])
DURATION = Histogram("taskwarren_task_duration_seconds", "Time spent in task functions.",
                     ["task", "queue"], buckets=DURATION_BUCKETS)
IN_FLIGHT = Gauge("taskwarren_tasks_in_flight", "Tasks running now.", ["queue"],
                  multiprocess_mode="livesum")
RETRIES = Counter("taskwarren_retries", "Failed calls sent for another attempt.",
                  ["task", "queue"])
DEAD = Counter("taskwarren_dead_lettered", "Messages moved to a dead-letter queue.",
               ["task", "queue"])
REDELIVERIES = Counter("taskwarren_redeliveries", "Deliveries the broker had delivered before.",
                       ["queue"])
PUBLISH_CONFIRM = Histogram(
    "taskwarren_publish_confirm_seconds",
    "Time from publishing a batch of task messages to the broker's confirm.",
    ["queue"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30))
RECONNECTS = Counter("taskwarren_reconnects", "Broker connections lost and reopened.")
CHILD_RESTARTS = Counter("taskwarren_child_restarts", "Worker children replaced.")


class PrometheusMetrics(Middleware):
    """Counts tasks, durations, retries, dead letters, redeliveries and restarts.

    Args:
        app: also time the confirms of what this app's tasks send (in worker children).
    """

    def __init__(self, app: Warren | None = None) -> None:
        self._children: dict[tuple[str, ...], Any] = {}
        if app is not None:
            app.publish_observers.append(self._published)

    def _published(self, queue: str, messages: int, seconds: float) -> None:
        self._child(PUBLISH_CONFIRM, queue).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def before_process(self, queue: str, task: str) -> None:
        self._child(IN_FLIGHT, queue).inc()

    def after_process(
        self, queue: str, task: str, outcome: str, duration_s: float, redelivered: bool
    ) -> None:
        self._child(IN_FLIGHT, queue).dec()
        self._child(TASKS, task, queue, outcome).inc()
        if duration_s:
            self._child(DURATION, task, queue).observe(duration_s)
        if outcome == "retried":
            self._child(RETRIES, task, queue).inc()
        elif outcome in ("dead_lettered", "rejected"):
            self._child(DEAD, task, queue).inc()
        if redelivered:
            self._child(REDELIVERIES, queue).inc()

    def reconnected(self) -> None:
        RECONNECTS.inc()

    def child_restarted(self) -> None:
        CHILD_RESTARTS.inc()
