"""The request log in a SQLite file (the default): stdlib sqlite3, WAL, used from one thread at a time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.requestlog.store import COLUMNS, FEEDBACK_COLUMNS, Query, requests_columns_sql, row

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY AUTOINCREMENT, {requests_columns_sql("REAL", "INTEGER")});
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, request_id TEXT NOT NULL, caller TEXT,
    score REAL NOT NULL, comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback (request_id);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts);
"""
INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


class SqliteStore:
    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        path = Path(path)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise FileNotFoundError(f"no request log at {path}")
        # The writer's worker thread opens it and the same thread uses it; the CLI uses it from its own.
        self._db = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        if create:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
            self._db.executescript(SCHEMA)

    def insert(self, records: list[dict[str, Any]]) -> None:
        rows = [row(r) for r in records]
        with self._db:  # one transaction per batch
            self._db.execute("BEGIN")
            self._db.executemany(INSERT, rows)

    def purge(self, before_ts: float) -> int:
        with self._db:
            self._db.execute("BEGIN")
            gone = self._db.execute("DELETE FROM requests WHERE ts < ?", (before_ts,)).rowcount
            self._db.execute("DELETE FROM feedback WHERE ts < ?", (before_ts,))
        return int(gone)

    def find(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT * FROM requests WHERE request_id = ? ORDER BY id DESC LIMIT 1", (request_id,)
        ).fetchone()
        return dict(row) if row is not None else None

    def add_feedback(self, request_id: str, caller: str | None, score: float, comment: str | None) -> int:
        cursor = self._db.execute(
            f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
            (time.time(), request_id, caller, score, comment),
        )
        return int(cursor.lastrowid or 0)

    def feedback(self, request_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM feedback WHERE request_id = ? ORDER BY id", (request_id,))
        return [dict(r) for r in rows]

    def query(self, query: Query) -> list[dict[str, Any]]:
        where, args = query.where("?")
        sql = f"SELECT * FROM requests{where} {query.order()} LIMIT ?"
        return [dict(r) for r in self._db.execute(sql, [*args, query.limit])]

    def close(self) -> None:
        self._db.close()
