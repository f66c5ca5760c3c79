"""Prometheus metrics of a worker pool, aggregated over its child processes.

Uses prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set
before ``prometheus_client`` is first imported in the pool (``taskwarren worker
--metrics-port`` does it), and the supervisor serves the aggregate.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from taskwarren.app import Warren
from taskwarren.middleware.base import UNKNOWN_TASK, Middleware, TaskRun

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

    Only the names of registered tasks become ``task`` labels; any other name counts as
    :data:`~taskwarren.middleware.UNKNOWN_TASK`.

    Registered on an app (``app.add_middleware(PrometheusMetrics(app))``), it also times
    the confirms of what that app sends (in worker children): events under the ``queue``
    label ``taskwarren.events`` and broadcasts under ``taskwarren.broadcasts``, never
    under their routing keys, which may carry ids.

    Args:
        app: take the task labels from its registry.
    """

    def __init__(self, app: Warren | None = None) -> None:
        self._children: dict[tuple[str, ...], Any] = {}
        self._tasks = app.tasks if app is not None else None

    def after_publish(self, queue: str, count: int, duration_s: float) -> None:
        """Time the confirm of a batch."""
        self._child(PUBLISH_CONFIRM, queue).observe(duration_s)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def before_process(self, run: TaskRun) -> None:
        """Count the run in flight."""
        self._child(IN_FLIGHT, run.queue).inc()

    def after_process(self, run: TaskRun) -> None:
        """Count its outcome, duration, retry or dead letter, and redelivery."""
        queue, task, outcome = run.queue, run.task_name, run.outcome
        self._child(IN_FLIGHT, queue).dec()
        if self._tasks is not None and task not in self._tasks:
            task = UNKNOWN_TASK
        self._child(TASKS, task, queue, outcome).inc()
        if run.duration_s:
            self._child(DURATION, task, queue).observe(run.duration_s)
        if outcome == "retried":
            self._child(RETRIES, task, queue).inc()
        elif outcome in ("dead_lettered", "rejected"):
            self._child(DEAD, task, queue).inc()
        if run.redelivered:
            self._child(REDELIVERIES, queue).inc()

    def reconnected(self) -> None:
        """Count a reconnection."""
        RECONNECTS.inc()

    def child_restarted(self) -> None:
        """Count a replaced child."""
        CHILD_RESTARTS.inc()
