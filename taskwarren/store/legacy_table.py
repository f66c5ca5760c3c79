"""An application's jobs table, as the legacy relay reads it: its names, checked.

:class:`LegacyTable` names the table, its columns and its statuses; every name is checked
to be a plain SQL name and is never spliced into SQL otherwise. :data:`LEASES` is
taskwarren's own table of leases on the rows being relayed (:func:`lease_ddl`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskwarren.errors import ConfigurationError
from taskwarren.message import MAX_ECHO_CHARS
from taskwarren.topology import check_queue_name

__all__ = ["LEASES", "LegacyTable", "lease_ddl"]

#: taskwarren's own table of the leases on rows being relayed (their table has none).
LEASES = "taskwarren_legacy_leases"

#: A table or column name taken as is; anything else is refused, never spliced into SQL.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


@dataclass(frozen=True)
class LegacyTable:
    """An application's jobs table, as the relay reads it.

    Attributes:
        table: the table (``schema.table`` allowed).
        id: the integer primary key.
        task: the column naming the job (a task name, or a key of ``task_names``).
        args: the column of keyword arguments, a JSON object (JSON or text type).
        status: the status column.
        pending: the status of rows waiting to be relayed.
        relaying: the status while a relay holds the row (between claim and confirm).
        done: the status once the broker has confirmed the message (``'queued'``).
        failed: the status of rows that cannot become a task call.
        error: a text column for the reason a row failed (optional; always logged).
        error_max_chars: longest reason written to ``error`` (its column's width).
        run_at: a date-time column: rows wait until the database's own clock
            (``CURRENT_TIMESTAMP``) reaches it; NULL means now. On SQLite it is text
            in UTC (``datetime('now')``), ``2026-12-07 00:24:07`` or with a ``T``;
            text SQLite cannot read as a date never comes due.
        queue_column: a column naming each row's queue.
        queue: one queue for every row (else ``queue_column``, else the task's own).
        task_names: ``task`` values to registered task names; when given, a value
            missing from it fails the row.
        source: the prefix of message ids (``"{source}:{id}"``, default: ``table``);
            give each relayed table in one broker its own.
    """

    table: str
    id: str = "id"
    task: str = "task"
    args: str = "args"
    status: str = "status"
    pending: str = "pending"
    relaying: str = "relaying"
    done: str = "queued"
    failed: str = "failed"
    error: str | None = None
    error_max_chars: int = 255
    run_at: str | None = None
    queue_column: str | None = None
    queue: str | None = None
    task_names: Mapping[str, str] | None = field(default=None, hash=False)
    source: str = ""

    def __post_init__(self) -> None:
        for part in self.table.split("."):
            _check_identifier(part, "table")
        names = {"id": self.id, "task": self.task, "args": self.args, "status": self.status,
                 "error": self.error, "run_at": self.run_at, "queue_column": self.queue_column}
        for what, name in names.items():
            if name is not None:
                _check_identifier(name, what)
        statuses = (self.pending, self.relaying, self.done, self.failed)
        if len(set(statuses)) != 4 or not all(statuses):
            raise ConfigurationError(f"the table {self.table}: pending, relaying, done and "
                                     f"failed must be four different statuses, not {statuses}")
        if self.queue is not None:
            check_queue_name(self.queue)
        object.__setattr__(self, "source", self.source or self.table)
        problem = ("give queue or queue_column, not both" if self.queue and self.queue_column
                   else "error_max_chars must be at least 20" if self.error_max_chars < 20
                   else "source is longer than 190 characters" if len(self.source) > 190
                   else "")
        if problem:
            raise ConfigurationError(f"the table {self.table}: {problem}")


def _check_identifier(name: str, what: str) -> None:
    if not _IDENTIFIER.match(name):
        raise ConfigurationError(f"{what} {name[:MAX_ECHO_CHARS]!r} is not a plain SQL name "
                                 "(letters, digits and _, not starting with a digit)")


def lease_ddl(dialect: str) -> str:
    """The statement that creates :data:`LEASES` on ``dialect`` (idempotent)."""
    types = {"sqlite": ("TEXT", "INTEGER", "REAL", ""),
             "postgresql": ("VARCHAR(190)", "BIGINT", "DOUBLE PRECISION", ""),
             "mysql": ("VARCHAR(190)", "BIGINT", "DOUBLE",
                       " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")}[dialect]
    return (f"CREATE TABLE IF NOT EXISTS {LEASES} (source {types[0]} NOT NULL, "
            f"row_id {types[1]} NOT NULL, claimed_until {types[2]} NOT NULL, "
            f"attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (source, row_id)){types[3]}")
