"""Results in MySQL 8 or MariaDB 10.6+ (``EMAIL_ANALYSIS_DB=mysql://user:pw@host/db``).

Through PyMySQL (``pip install PyMySQL``), imported only when such a URL is used. The
ingress keeps its record and taskwarren's outbox in the same database, so one
transaction covers both.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

from .analysis import Analysis
from .store import (
    _DATA_COLUMNS,
    ResultStore,
    StoreConfigurationError,
    StoreSummary,
    _histogram,
    _insert_sql,
    _row_values,
)

__all__ = ["MySQLStore"]


def _upsert_sql(table: str) -> str:
    # MySQL applies the assignments left to right, each seeing the ones before: the
    # comparison must read the old analysed_at, so that column is assigned last.
    newer = f"VALUES(analysed_at) >= {table}.analysed_at"
    ordered = [c for c in _DATA_COLUMNS if c != "analysed_at"] + ["analysed_at"]
    sets = ",\n  ".join(f"{c} = IF({newer}, VALUES({c}), {table}.{c})" for c in ordered)
    return (f"INSERT INTO {table} (message_id, {', '.join(_DATA_COLUMNS)}, deliveries)\n"
            f"VALUES ({', '.join(['%s'] * 7)}, 1)\n"
            f"ON DUPLICATE KEY UPDATE\n  deliveries = {table}.deliveries + 1,\n  {sets}")


class MySQLStore(ResultStore):
    """MySQL/MariaDB through PyMySQL, each upsert committed on its own."""

    def __init__(self, url: str, table: str = "email_analysis") -> None:
        super().__init__(table)
        try:
            import pymysql  # noqa: F401  (checked here so a bad setup fails early)
        except ImportError as exc:
            raise StoreConfigurationError(
                "EMAIL_ANALYSIS_DB is a MySQL URL but PyMySQL is not installed: "
                "pip install PyMySQL") from exc
        self.url = url

    def _connect(self) -> Any:
        import pymysql

        parts = urlsplit(self.url)
        database = unquote(parts.path.lstrip("/"))
        if not database:
            raise StoreConfigurationError("EMAIL_ANALYSIS_DB names no database: "
                                          "mysql://user:password@host:3306/database")
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
            user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
            database=database, autocommit=True, charset="utf8mb4", connect_timeout=10)
        with conn.cursor() as cur:
            cur.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.table} (
                    message_id VARCHAR(255) NOT NULL PRIMARY KEY,
                    sender_domain VARCHAR(255),
                    score INTEGER NOT NULL,
                    broken BOOLEAN NOT NULL,
                    analysed_at DOUBLE NOT NULL,
                    stored_at DOUBLE NOT NULL,
                    deliveries INTEGER NOT NULL DEFAULT 1,
                    analysis LONGTEXT NOT NULL,
                    INDEX {self.table}_stored_at (stored_at)
                ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""")
        return conn

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._connection().cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def upsert(self, analysis: Analysis) -> None:
        values: list[Any] = list(_row_values(analysis))
        values[0] = analysis.message_id[:255]
        with self._connection().cursor() as cur:
            cur.execute(_upsert_sql(self.table), values)

    _mark = "%s"

    def _once(self, claim_sql: str, params: tuple[Any, ...], analysis: Analysis,
              message_key: str) -> bool:
        conn = self._connection()
        values: list[Any] = list(_row_values(analysis))
        conn.begin()
        try:
            with conn.cursor() as cur:
                if cur.execute(claim_sql, params) != 1:
                    conn.rollback()
                    return False
                values[0] = self.row_id(analysis.message_id, message_key)
                cur.execute(_insert_sql(self.table, "%s"), values)
            conn.commit()
            return True
        except BaseException:
            conn.rollback()
            raise

    def get(self, message_id: str) -> Analysis | None:
        rows = self._query(f"SELECT analysis FROM {self.table} WHERE message_id = %s",
                           (message_id,))
        return Analysis.model_validate(json.loads(rows[0][0])) if rows else None

    def deliveries(self, message_id: str) -> int:
        rows = self._query(f"SELECT deliveries FROM {self.table} WHERE message_id = %s",
                           (message_id,))
        return int(rows[0][0]) if rows else 0

    def count(self, since: float | None = None) -> int:
        rows = self._query(f"SELECT COUNT(*) FROM {self.table} WHERE stored_at >= %s",
                           (since or 0.0,))
        return int(rows[0][0])

    def summary(self, since: float | None = None, top: int = 10) -> StoreSummary:
        where = (since or 0.0,)
        total, broken, mean = self._query(
            f"SELECT COUNT(*), COALESCE(SUM(broken), 0), COALESCE(AVG(score), 0) "
            f"FROM {self.table} WHERE stored_at >= %s", where)[0]
        buckets = self._query(
            f"SELECT LEAST(score DIV 10, 9) AS bucket, COUNT(*) FROM {self.table} "
            f"WHERE stored_at >= %s GROUP BY bucket", where)
        domains = self._query(
            f"SELECT sender_domain, COUNT(*) AS n FROM {self.table} "
            f"WHERE stored_at >= %s AND sender_domain IS NOT NULL "
            f"GROUP BY sender_domain ORDER BY n DESC, sender_domain LIMIT %s", (*where, top))
        return StoreSummary(total=int(total), broken=int(broken),
                            mean_score=round(float(mean), 2),
                            score_histogram=_histogram(buckets),
                            top_sender_domains=[(str(d), int(n)) for d, n in domains])
