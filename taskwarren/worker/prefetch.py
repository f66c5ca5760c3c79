"""Adaptive prefetch: each consumer keeps about :data:`PREFETCH_BUFFER_S` of work buffered.

Short tasks need many messages in flight to keep the executor threads busy; long ones
need few, so that a message waits in the broker (where another worker may take it)
rather than behind a long task in this child's buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger("taskwarren.worker")

#: Seconds of work each consumer keeps buffered when the prefetch adapts.
PREFETCH_BUFFER_S = 0.05
#: Largest adaptive prefetch: enough in flight for tasks that take microseconds.
PREFETCH_MAX = 100
#: Weight of the newest duration in the per-queue moving average.
EWMA_ALPHA = 0.2


@dataclass(slots=True)
class QueueState:
    """A consumed queue's prefetch and the moving average of its tasks' durations."""

    prefetch: int
    avg_s: float | None = None

    def observe(self, duration_s: float) -> None:
        """Fold a task's duration into the average (0: it never ran, and counts nothing)."""
        if duration_s:
            self.avg_s = duration_s if self.avg_s is None else (
                EWMA_ALPHA * duration_s + (1 - EWMA_ALPHA) * self.avg_s)

    def wanted(self, threads: int) -> int | None:
        """A new prefetch when the durations call for one at least twice or half the
        current one (smaller changes are not worth a round trip), else ``None``."""
        if self.avg_s is None:
            return None
        wanted = math.ceil(threads * PREFETCH_BUFFER_S / max(self.avg_s, 1e-6))
        wanted = max(threads, min(PREFETCH_MAX, wanted))
        if wanted >= self.prefetch * 2 or wanted * 2 <= self.prefetch:
            return wanted
        return None


def adapt(states: Mapping[str, QueueState], room: Mapping[str, int],
          consume: Callable[[str, int], None]) -> None:
    """Restart the consumer of each queue whose tasks' durations call for a new prefetch
    (``room``: the tasks a queue's deliveries may run at once, its floor)."""
    for name, state in states.items():
        wanted = state.wanted(room[name])
        if wanted is not None:
            log.debug("worker.prefetch_changed", queue=name, prefetch=wanted,
                      avg_task_s=state.avg_s)
            state.prefetch = wanted
            consume(name, wanted)
