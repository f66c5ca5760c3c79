"""Middleware the integration tests register with ``taskwarren worker --middleware``.

:class:`First` and :class:`Second` append one JSON line per hook to the file named by
``TW_HOOKS_FILE`` (one O_APPEND write each, so processes do not interleave lines);
:class:`Exploding` raises in every hook.
"""

from __future__ import annotations

import json
import os
from typing import Any

from taskwarren import Middleware, TaskRun
from taskwarren.message import Envelope


class First(Middleware):
    """Records every hook it sees."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.environ["TW_HOOKS_FILE"]

    def _write(self, hook: str, **fields: Any) -> None:
        line = json.dumps({"mw": type(self).__name__, "hook": hook, "pid": os.getpid(),
                           **fields}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _run(self, hook: str, run: TaskRun) -> None:
        exc = run.exception
        self._write(hook, task_name=run.task_name, task_id=run.task_id, attempt=run.attempt,
                    queue=run.queue, outcome=run.outcome, duration_s=run.duration_s,
                    exception_type=type(exc).__name__ if exc is not None else None,
                    exception=str(exc) if exc is not None else None)

    def before_enqueue(self, envelope: Envelope) -> None:
        self._write("before_enqueue", task_id=envelope.message_id, task_name=envelope.task)

    def after_enqueue(self, envelope: Envelope) -> None:
        self._write("after_enqueue", task_id=envelope.message_id, task_name=envelope.task)

    def before_process(self, run: TaskRun) -> None:
        self._run("before_process", run)

    def after_process(self, run: TaskRun) -> None:
        self._run("after_process", run)

    def child_started(self, index: int) -> None:
        self._write("child_started", index=index)


class Second(First):
    """Records every hook too; registered after :class:`First`."""


class Exploding(Middleware):
    """Raises in every hook: the messages must not notice."""

    def before_enqueue(self, envelope: Envelope) -> None:
        raise RuntimeError("before_enqueue broke")

    def after_enqueue(self, envelope: Envelope) -> None:
        raise RuntimeError("after_enqueue broke")

    def before_process(self, run: TaskRun) -> None:
        raise RuntimeError("before_process broke")

    def after_process(self, run: TaskRun) -> None:
        raise RuntimeError("after_process broke")

    def failure_action(self, run: TaskRun, delivery: Any, traceback: str) -> Any:
        raise RuntimeError("failure_action broke")

    def child_started(self, index: int) -> None:
        raise RuntimeError("child_started broke")
