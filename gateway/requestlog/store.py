"""What both stores share: the tables, the filter of `gateway logs`, and the `Store` interface.

Stores are synchronous (stdlib sqlite3, psycopg 3) and are only ever called from one worker thread
(the writer's) or from the CLI, so no call of theirs runs on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# Column order of the `requests` table; every record has exactly these keys.
COLUMNS = (
    "ts",
    "request_id",
    "trace_id",
    "span_id",
    "caller",
    "model",
    "served_model",
    "backend",
    "endpoint",
    "stream",
    "status",
    "total_ms",
    "upstream_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cache",
    "guard",
    "finish_reasons",
    "error",
    "prompt",
    "answer",
)
TEXT, INT, REAL = "TEXT", "INTEGER", "REAL"
COLUMN_TYPES: dict[str, str] = {
    "ts": REAL,
    "stream": INT,
    "status": INT,
    "total_ms": REAL,
    "upstream_ms": REAL,
    "ttft_ms": REAL,
    "prompt_tokens": INT,
    "completion_tokens": INT,
    "cost_usd": REAL,
}
FEEDBACK_COLUMNS = ("ts", "request_id", "caller", "score", "comment")


def requests_columns_sql(real: str, integer: str) -> str:
    """Column definitions of `requests` (after the id), in the dialect's float and integer types."""
    parts = []
    for name in COLUMNS:
        kind = {REAL: real, INT: integer}.get(COLUMN_TYPES.get(name, TEXT), TEXT)
        null = " NOT NULL" if name in ("ts", "request_id") else ""
        parts.append(f"{name} {kind}{null}")
    return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Query:
    """A filter over `requests`, newest first unless `after_id` is given (follow: oldest first)."""

    model: str | None = None
    status: str | None = None  # "200", "5xx", "4xx", "429"
    since_ts: float | None = None
    after_id: int | None = None
    limit: int = 50

    def where(self, mark: str) -> tuple[str, list[Any]]:
        """SQL WHERE clause with `mark` as the placeholder (`?` or `%s`), and its arguments."""
        clauses: list[str] = []
        args: list[Any] = []
        if self.model is not None:
            clauses.append(f"(model = {mark} OR served_model = {mark})")
            args += [self.model, self.model]
        if self.status is not None:
            low, high = status_range(self.status)
            clauses.append(f"status >= {mark} AND status <= {mark}")
            args += [low, high]
        if self.since_ts is not None:
            clauses.append(f"ts >= {mark}")
            args.append(self.since_ts)
        if self.after_id is not None:
            clauses.append(f"id > {mark}")
            args.append(self.after_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def order(self) -> str:
        return "ORDER BY id ASC" if self.after_id is not None else "ORDER BY id DESC"


def status_range(status: str) -> tuple[int, int]:
    """`404` -> (404, 404); `5xx` -> (500, 599). Raises ValueError for anything else."""
    text = status.strip().lower()
    if len(text) == 3 and text[0].isdigit() and text[1:] == "xx":
        base = int(text[0]) * 100
        return base, base + 99
    if len(text) == 3 and text.isdigit():
        return int(text), int(text)
    raise ValueError(f"status must look like 200 or 5xx, not {status!r}")


def row(record: dict[str, Any]) -> tuple[Any, ...]:
    """A record's values in column order (booleans as 0/1, which both databases store as integers)."""
    return tuple(int(v) if isinstance(v, bool) else v for v in (record.get(c) for c in COLUMNS))


class Store(Protocol):
    def insert(self, records: list[dict[str, Any]]) -> None: ...

    def purge(self, before_ts: float) -> int: ...

    def find(self, request_id: str) -> dict[str, Any] | None: ...

    def add_feedback(self, request_id: str, caller: str | None, score: float, comment: str | None) -> int: ...

    def feedback(self, request_id: str) -> list[dict[str, Any]]: ...

    def query(self, query: Query) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...
