"""Middleware: policy and observation hooks around the worker's life and each task.

A hook that raises is logged and the other middleware still run. ``after_*`` hooks
run in reverse order of registration.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

log = structlog.get_logger("taskwarren.middleware")


class Middleware:
    """Base class: every hook does nothing unless overridden."""

    def child_started(self, index: int) -> None:
        """In a new worker child, before it consumes."""

    def before_process(self, queue: str, task: str) -> None:
        """A delivery is about to run (``task`` is its ``tw-task`` header)."""

    def after_process(
        self, queue: str, task: str, outcome: str, duration_s: float, redelivered: bool
    ) -> None:
        """A delivery ran: ``outcome`` is succeeded, retried, dead_lettered or rejected."""

    def reconnected(self) -> None:
        """The child's broker connection was lost and is being opened again."""

    def child_restarted(self) -> None:
        """In the supervisor: a dead child was replaced."""


class Chain(Middleware):
    """Runs a list of middleware, isolating their failures."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.middleware = list(middleware)
        self._reversed = list(reversed(self.middleware))

    def _each(self, name: str, items: Sequence[Middleware], *args: object) -> None:
        for m in items:
            try:
                getattr(m, name)(*args)
            except Exception as exc:
                log.error("middleware.failed", middleware=type(m).__name__, hook=name,
                          error=str(exc))

    def child_started(self, index: int) -> None:
        self._each("child_started", self.middleware, index)

    def before_process(self, queue: str, task: str) -> None:
        self._each("before_process", self.middleware, queue, task)

    def after_process(
        self, queue: str, task: str, outcome: str, duration_s: float, redelivered: bool
    ) -> None:
        self._each("after_process", self._reversed, queue, task, outcome, duration_s,
                   redelivered)

    def reconnected(self) -> None:
        self._each("reconnected", self._reversed)

    def child_restarted(self) -> None:
        self._each("child_restarted", self._reversed)
