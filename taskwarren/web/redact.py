"""Problems as an anonymous visitor sees them: the kind of failure, without the details
(a database driver's text, a host or database name) that only a logged-in visitor sees.

An anonymous visitor of a dashboard that cannot be logged in to (no token) sees no
details either: they are logged instead, each problem at most every
:data:`LOG_EVERY_S`.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from typing import Any

import structlog

from taskwarren.text import printable

__all__ = ["PROBLEM_KEYS", "TOP_KEYS", "Redactor"]

log = structlog.get_logger("taskwarren.web")

#: The keys under which pages and answers carry problems, at any depth.
PROBLEM_KEYS = frozenset({"problem", "note", "dead_letters_problem"})
#: Keys that carry a problem at the top of an answer or a page only (deeper, an
#: ``error`` is a job's or a dead letter's own, which everyone may see).
TOP_KEYS = frozenset({"error", "message"})
#: A problem with details: ``StoreError: job store (postgresql://...): ...``.
_DETAILED = re.compile(r"([A-Z][A-Za-z]*Error): ")
#: What replaces the details.
HIDDEN = "details are shown once logged in, and in the dashboard's log"
#: How often one problem is logged, at most (seconds).
LOG_EVERY_S = 60.0


class Redactor:
    """Problems as an anonymous visitor sees them: the kind of failure without its details
    (which are logged, each at most every :data:`LOG_EVERY_S`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}

    def text(self, text: str) -> str:
        """``text`` without details."""
        found = _DETAILED.match(text)
        if found is not None:
            brief = f"{found.group(1)} ({HIDDEN})"
        elif text.startswith("the management API failed"):
            brief = f"the management API failed; these figures come from AMQP ({HIDDEN})"
        else:
            return text
        self._log(text)
        return brief

    def value(self, key: str, value: Any, depth: int = 0) -> Any:
        """``value`` (found under ``key``, ``depth`` levels down: a page's context and
        the members of an answer are at 1) with the problems in it redacted."""
        if isinstance(value, str):
            if key in PROBLEM_KEYS or (depth <= 1 and key in TOP_KEYS):
                return self.text(value)
            return value
        if isinstance(value, dict):
            return {k: self.value(str(k), v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(key, v, depth) for v in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names = [f.name for f in dataclasses.fields(value) if f.name in PROBLEM_KEYS]
            if names:
                return dataclasses.replace(value, **{
                    name: self.value(name, getattr(value, name), depth + 1)
                    for name in names})
        return value

    def _log(self, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._logged.get(text, -LOG_EVERY_S) < LOG_EVERY_S:
                return
            if len(self._logged) >= 100:
                self._logged.clear()
            self._logged[text] = now
        log.warning("web.problem", problem=printable(text, 300))
