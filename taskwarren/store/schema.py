"""The job store's tables, as DDL for each database taskwarren supports.

``taskwarren_outbox`` holds task calls written inside the application's own
transactions, whole (task, queue, headers, body), until a relay has them confirmed by
the broker; ``taskwarren_outbox_rejected`` keeps the rows a relay could not turn into a
message, with the reason. Times are seconds since the epoch (UTC), as floating point
numbers: the same type and meaning on every database and driver.

The claim index is ``(not_before, id)``: a relay asks for due rows in that order, so
the database walks the index and never sorts (MySQL locks every row a filesort reads).

``taskwarren_jobs`` is the public, queryable record of every job: one row per task id,
its state (``queued``, ``scheduled``, ``running``, ``retrying``, ``succeeded``, ``dead``,
``cancelled``), attempt, timings, worker and last error. ``version`` orders what is
known of a job (run epoch, attempt, rank of the state): a write with a lower version
never overwrites a higher one. ``unique_key`` is unique among live jobs (``queued``,
``scheduled``, ``running``, ``retrying``): a partial index on PostgreSQL and SQLite, a
generated column that is NULL outside live states on MySQL/MariaDB.

``taskwarren_schedules`` has a row per schedule (a task's ``cron=`` or ``every=``): its
definition and ``decided_until``, the time up to which every tick has been decided. A
scheduler decides ticks under that row's lock, and records each in
``taskwarren_schedule_ticks``, whose key (schedule, tick) a tick can be claimed under
once only. Ticks are whole seconds since the epoch (UTC), exact on every database.
"""

from __future__ import annotations

from typing import Any, Literal

Dialect = Literal["sqlite", "postgresql", "mysql"]

#: The outbox table.
OUTBOX = "taskwarren_outbox"
#: Where rows that cannot become a message are kept, with the reason.
REJECTED = "taskwarren_outbox_rejected"
#: The jobs table.
JOBS = "taskwarren_jobs"
#: The schedules table.
SCHEDULES = "taskwarren_schedules"
#: The decided ticks.
TICKS = "taskwarren_schedule_ticks"
#: States in which a job holds its ``unique_key``.
LIVE_STATES = ("queued", "scheduled", "running", "retrying")
_LIVE_SQL = "state IN ('queued', 'scheduled', 'running', 'retrying')"

# The jobs table's columns after the key and before the unique key, per dialect.
_JOB_COLUMNS = """
    task {name} NOT NULL,
    queue {name} NOT NULL,
    state VARCHAR(16) NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0,
    args {text},
    error {text},
    traceback {text},
    worker {name},
    created_at {real} NOT NULL,
    scheduled_at {real},
    started_at {real},
    finished_at {real},
    duration_s {real},
    updated_at {real} NOT NULL,"""


_SCHEDULE_COLUMNS = """
    name {key} NOT NULL PRIMARY KEY,
    spec {text} NOT NULL,
    task {name} NOT NULL,
    queue {name} NOT NULL,
    defined_at {real} NOT NULL,
    decided_until BIGINT NOT NULL,
    last_tick BIGINT,
    next_tick BIGINT,
    last_job {name},
    missed BIGINT NOT NULL DEFAULT 0,
    checked_at {real} NOT NULL"""

_TICK_COLUMNS = """
    schedule {key} NOT NULL,
    tick_at BIGINT NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    task_id {name},
    decided_at {real} NOT NULL,
    PRIMARY KEY (schedule, tick_at)"""


def _schedule_tables(name: str, real: str, text: str, suffix: str = "",
                     key: str | None = None) -> list[str]:
    # ``key``: the schedule name's type; on MySQL a binary collation, so that names that
    # differ only in case or accents are two schedules, as everywhere else.
    columns = {"name": name, "real": real, "text": text, "key": key or name}
    return [f"CREATE TABLE IF NOT EXISTS {SCHEDULES} ("
            f"{_SCHEDULE_COLUMNS.format(**columns)}\n){suffix}",
            f"CREATE TABLE IF NOT EXISTS {TICKS} ("
            f"{_TICK_COLUMNS.format(**columns)}\n){suffix}"]


def _job_indexes(if_not_exists: str) -> list[str]:
    return [f"CREATE INDEX {if_not_exists}{JOBS}_state ON {JOBS} (state, created_at)",
            f"CREATE INDEX {if_not_exists}{JOBS}_task ON {JOBS} (task, created_at)",
            f"CREATE INDEX {if_not_exists}{JOBS}_finished ON {JOBS} (finished_at)",
            *_listing_indexes(if_not_exists)]


def _listing_indexes(if_not_exists: str) -> list[str]:
    # Added with the dashboard: its jobs page lists the newest jobs, of every queue or
    # of one, a page at a time (keyset on created_at, task_id), without a sort. The task
    # id is in the queue index too: SQLite, which cannot tell a rare queue from a common
    # one, would otherwise rather walk taskwarren_jobs_created than sort ties.
    return [f"CREATE INDEX {if_not_exists}{JOBS}_created ON {JOBS} (created_at, task_id)",
            f"CREATE INDEX {if_not_exists}{JOBS}_queue ON {JOBS} (queue, created_at, task_id)"]

_SQLITE = [
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    task TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    not_before REAL NOT NULL,
    claimed_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0
)""",
    f"CREATE INDEX IF NOT EXISTS {OUTBOX}_due ON {OUTBOX} (not_before, id)",
    f"""CREATE TABLE IF NOT EXISTS {REJECTED} (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    task TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    reason TEXT NOT NULL,
    rejected_at REAL NOT NULL
)""",
    f"""CREATE TABLE IF NOT EXISTS {JOBS} (
    task_id TEXT NOT NULL PRIMARY KEY,{_JOB_COLUMNS.format(name="TEXT", text="TEXT", real="REAL")}
    unique_key TEXT
)""",
    *_job_indexes("IF NOT EXISTS "),
    f"CREATE UNIQUE INDEX IF NOT EXISTS {JOBS}_live_key ON {JOBS} (unique_key) "
    f"WHERE {_LIVE_SQL}",
    *_schedule_tables("TEXT", "REAL", "TEXT"),
]

_POSTGRESQL = [
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX} (
    id BIGSERIAL PRIMARY KEY,
    task_id VARCHAR(255) NOT NULL,
    queue VARCHAR(255) NOT NULL,
    task TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    not_before DOUBLE PRECISION NOT NULL,
    claimed_until DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0
)""",
    f"CREATE INDEX IF NOT EXISTS {OUTBOX}_due ON {OUTBOX} (not_before, id)",
    f"""CREATE TABLE IF NOT EXISTS {REJECTED} (
    id BIGINT PRIMARY KEY,
    task_id VARCHAR(255) NOT NULL,
    queue VARCHAR(255) NOT NULL,
    task TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    rejected_at DOUBLE PRECISION NOT NULL
)""",
    f"""CREATE TABLE IF NOT EXISTS {JOBS} (
    task_id VARCHAR(255) NOT NULL PRIMARY KEY,{_JOB_COLUMNS.format(
        name="VARCHAR(255)", text="TEXT", real="DOUBLE PRECISION")}
    unique_key VARCHAR(255)
)""",
    *_job_indexes("IF NOT EXISTS "),
    f"CREATE UNIQUE INDEX IF NOT EXISTS {JOBS}_live_key ON {JOBS} (unique_key) "
    f"WHERE {_LIVE_SQL}",
    *_schedule_tables("VARCHAR(255)", "DOUBLE PRECISION", "TEXT"),
]

_MYSQL_JOB_KEYS = ",\n    ".join(
    i.replace(f"CREATE INDEX {JOBS}", f"KEY {JOBS}").replace(f" ON {JOBS}", "")
    for i in _job_indexes(""))

_MYSQL = [
    f"""CREATE TABLE IF NOT EXISTS {OUTBOX} (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_id VARCHAR(255) NOT NULL,
    queue VARCHAR(255) NOT NULL,
    task TEXT NOT NULL,
    headers MEDIUMTEXT NOT NULL,
    body LONGBLOB NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    enqueued_at DOUBLE NOT NULL,
    not_before DOUBLE NOT NULL,
    claimed_until DOUBLE NULL,
    attempts INT NOT NULL DEFAULT 0,
    KEY {OUTBOX}_due (not_before, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    f"""CREATE TABLE IF NOT EXISTS {REJECTED} (
    id BIGINT NOT NULL PRIMARY KEY,
    task_id VARCHAR(255) NOT NULL,
    queue VARCHAR(255) NOT NULL,
    task TEXT NOT NULL,
    headers MEDIUMTEXT NOT NULL,
    body LONGBLOB NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    enqueued_at DOUBLE NOT NULL,
    reason TEXT NOT NULL,
    rejected_at DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    # MySQL has no partial index: live_key is unique_key while the job is live, else NULL
    # (NULLs never collide in a UNIQUE index). The indexes are inline: MySQL has no
    # CREATE INDEX IF NOT EXISTS.
    f"""CREATE TABLE IF NOT EXISTS {JOBS} (
    task_id VARCHAR(255) NOT NULL PRIMARY KEY,{_JOB_COLUMNS.format(
        name="VARCHAR(255)", text="MEDIUMTEXT", real="DOUBLE")}
    unique_key VARCHAR(255) NULL,
    live_key VARCHAR(255) AS (IF({_LIVE_SQL}, unique_key, NULL)) STORED,
    UNIQUE KEY {JOBS}_live_key (live_key),
    {_MYSQL_JOB_KEYS}
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    *_schedule_tables("VARCHAR(255)", "DOUBLE", "TEXT", " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
                      key="VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
]

_DDL: dict[Dialect, list[str]] = {"sqlite": _SQLITE, "postgresql": _POSTGRESQL, "mysql": _MYSQL}


def ddl(dialect: Dialect) -> list[str]:
    """The statements that create taskwarren's tables on ``dialect`` (each idempotent)."""
    return list(_DDL[dialect])


def upgrades(dialect: Dialect) -> list[str]:
    """Statements that bring tables made by an earlier release up to date, where
    :func:`ddl` cannot: MySQL has no ``CREATE INDEX IF NOT EXISTS``, so an index added
    since is created by :func:`upgrade`."""
    return _listing_indexes("") if dialect == "mysql" else []


#: MySQL's error "duplicate key name": the index an upgrade adds exists already.
MYSQL_DUPLICATE_KEY_NAME = 1061


def upgrade(cursor: Any, dialect: Dialect) -> None:
    """Run :func:`upgrades` on ``cursor``; an index that exists already is no error."""
    for statement in upgrades(dialect):
        try:
            cursor.execute(statement)
        except Exception as exc:
            if getattr(exc, "args", (None,))[:1] != (MYSQL_DUPLICATE_KEY_NAME,):
                raise


#: The columns the application's transaction writes, in order.
INSERT_COLUMNS = ("task_id", "queue", "task", "headers", "body", "content_type",
                  "enqueued_at", "not_before")


def insert_sql(placeholder: str) -> str:
    """The INSERT of one outbox row, with ``placeholder`` (``?`` or ``%s``) per value."""
    marks = ", ".join([placeholder] * len(INSERT_COLUMNS))
    return f"INSERT INTO {OUTBOX} ({', '.join(INSERT_COLUMNS)}) VALUES ({marks})"


def is_missing_table(exc: BaseException) -> bool:
    """Whether a driver's error says one of taskwarren's tables does not exist.

    Read from the error itself, without importing any driver: sqlite3's "no such
    table", PostgreSQL's SQLSTATE 42P01, MySQL's error 1146.
    """
    seen: BaseException | None = exc
    for _ in range(3):  # SQLAlchemy wraps the driver's error in ``orig``
        if seen is None:
            return False
        text = str(seen)
        if "taskwarren_" in text and ("no such table" in text
                                                 or "doesn't exist" in text
                                                 or "does not exist" in text):
            return True
        if getattr(seen, "sqlstate", None) == "42P01":
            return True
        args = getattr(seen, "args", ())
        if args and args[0] == 1146:
            return True
        seen = getattr(seen, "orig", None)
    return False
