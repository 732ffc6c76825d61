"""The request log in PostgreSQL (psycopg 3, synchronous, used from the writer's one worker thread)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.requestlog.store import COLUMNS, FEEDBACK_COLUMNS, Query, requests_columns_sql, row

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS {requests} (id BIGSERIAL PRIMARY KEY, "
    + requests_columns_sql("DOUBLE PRECISION", "BIGINT")
    + ")",
    "CREATE INDEX IF NOT EXISTS {requests}_ts ON {requests} (ts)",
    "CREATE INDEX IF NOT EXISTS {requests}_request_id ON {requests} (request_id)",
    "CREATE TABLE IF NOT EXISTS {feedback} (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, "
    "request_id TEXT NOT NULL, caller TEXT, score DOUBLE PRECISION NOT NULL, comment TEXT)",
    "CREATE INDEX IF NOT EXISTS {feedback}_request_id ON {feedback} (request_id)",
    "CREATE INDEX IF NOT EXISTS {feedback}_ts ON {feedback} (ts)",
]


class PostgresStore:
    """Tables `{prefix}requests` and `{prefix}feedback`; a lost connection is reopened on the next call."""

    def __init__(self, dsn: str, *, prefix: str = "gateway_", create: bool = True) -> None:
        if not prefix.replace("_", "").isalnum():
            raise ValueError(f"table prefix must be letters, digits and _: {prefix!r}")
        self._dsn = dsn
        self.requests, self.feedback_table = f"{prefix}requests", f"{prefix}feedback"
        self._db: psycopg.Connection[dict[str, Any]] | None = None
        self._connect()
        if create:
            with self._conn().transaction():
                for statement in SCHEMA:
                    self._conn().execute(statement.format(requests=self.requests, feedback=self.feedback_table))

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        self._db = psycopg.connect(self._dsn, autocommit=True, row_factory=dict_row, connect_timeout=5)
        return self._db

    def _conn(self) -> psycopg.Connection[dict[str, Any]]:
        if self._db is None or self._db.closed or self._db.broken:
            return self._connect()
        return self._db

    def insert(self, records: list[dict[str, Any]]) -> None:
        sql = f"INSERT INTO {self.requests} ({', '.join(COLUMNS)}) VALUES ({', '.join('%s' for _ in COLUMNS)})"
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(sql, [row(r) for r in records])

    def purge(self, before_ts: float) -> int:
        conn = self._conn()
        with conn.transaction():
            gone = conn.execute(f"DELETE FROM {self.requests} WHERE ts < %s", (before_ts,)).rowcount
            conn.execute(f"DELETE FROM {self.feedback_table} WHERE ts < %s", (before_ts,))
        return int(gone)

    def find(self, request_id: str) -> dict[str, Any] | None:
        sql = f"SELECT * FROM {self.requests} WHERE request_id = %s ORDER BY id DESC LIMIT 1"
        return self._conn().execute(sql, (request_id,)).fetchone()

    def add_feedback(self, request_id: str, caller: str | None, score: float, comment: str | None) -> int:
        sql = (
            f"INSERT INTO {self.feedback_table} ({', '.join(FEEDBACK_COLUMNS)}) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id"
        )
        row = self._conn().execute(sql, (time.time(), request_id, caller, score, comment)).fetchone()
        return int(row["id"]) if row else 0

    def feedback(self, request_id: str) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM {self.feedback_table} WHERE request_id = %s ORDER BY id"
        return self._conn().execute(sql, (request_id,)).fetchall()

    def query(self, query: Query) -> list[dict[str, Any]]:
        where, args = query.where("%s")
        sql = f"SELECT * FROM {self.requests}{where} {query.order()} LIMIT %s"
        return self._conn().execute(sql, [*args, query.limit]).fetchall()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
