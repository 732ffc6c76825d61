"""`gateway logs`: tail and filter the request log (SQLite file or PostgreSQL)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gateway.requestlog.store import Store

DEFAULT_DB = "gateway-requests.db"
FOLLOW_POLL_S = 0.5
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: Any) -> None:
    logs = sub.add_parser(
        "logs",
        help="tail and filter the request log",
        description="Show request-log records, newest last. Filters combine with AND.",
    )
    where = logs.add_mutually_exclusive_group()
    where.add_argument("--db", help=f"SQLite file (default: {DEFAULT_DB})")
    where.add_argument("--dsn", help="PostgreSQL connection string")
    where.add_argument("--config", "-c", help="read the log's location from this policy file")
    logs.add_argument("--table-prefix", default="gateway_", help="PostgreSQL table prefix (default: %(default)s)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new records as they arrive")
    logs.add_argument("--model", help="only this model (the requested or the answering one)")
    logs.add_argument("--status", help="only this status: 200, 404, 4xx, 5xx")
    logs.add_argument("--since", help="only records newer than this: 30s, 10m, 2h, 7d, or an ISO time")
    logs.add_argument("--limit", "-n", type=int, default=20, help="records shown at first (default: %(default)s)")
    logs.add_argument("--json", action="store_true", help="one JSON object per line, every column")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from gateway.requestlog.store import Query, status_range

    try:
        since = parse_since(args.since) if args.since else None
        if args.status:
            status_range(args.status)
        if args.limit < 1:
            raise ValueError("--limit must be at least 1")
        store = _open(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"gateway logs: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a database that refuses us (psycopg's errors): say so, no traceback
        print(f"gateway logs: cannot open the request log: {exc}", file=sys.stderr)
        return 1
    query = Query(model=args.model, status=args.status, since_ts=since, limit=args.limit)
    try:
        rows = list(reversed(store.query(query)))
        for row in rows:
            _print(row, args.json, out)
        last = rows[-1]["id"] if rows else _last_id(store)
        while args.follow:
            time.sleep(FOLLOW_POLL_S)
            for row in store.query(Query(model=args.model, status=args.status, since_ts=since, after_id=last)):
                _print(row, args.json, out)
                last = row["id"]
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # e.g. PostgreSQL tables not created yet (no gateway has written there)
        print(f"gateway logs: cannot read the request log: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def parse_since(text: str, now: float | None = None) -> float:
    """`10m` -> ten minutes ago (unix seconds); an ISO time as given (UTC when it has no zone)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since must look like 30s, 10m, 2h, 7d or an ISO time, not {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.now().astimezone().tzinfo)
    return when.timestamp()


def _open(args: argparse.Namespace) -> Store:
    from gateway.requestlog.store_sqlite import SqliteStore

    dsn, path, prefix = args.dsn, args.db, args.table_prefix
    if args.config:
        from gateway.loader import load_file

        config = load_file(args.config).policy.telemetry.request_log
        dsn, path, prefix = config.dsn(), config.path, config.table_prefix
    if dsn:
        from gateway.requestlog.store_postgres import PostgresStore

        return PostgresStore(dsn, prefix=prefix, create=False)
    return SqliteStore(path or DEFAULT_DB, create=False)


def _last_id(store: Store) -> int:
    from gateway.requestlog.store import Query

    newest = store.query(Query(limit=1))
    return int(newest[0]["id"]) if newest else 0


def _print(row: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(row, default=str) + "\n")
    else:
        out.write(format_row(row) + "\n")
    out.flush()


def format_row(row: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(row["ts"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    tokens = f"{row['prompt_tokens'] or 0}+{row['completion_tokens'] or 0}" if row.get("prompt_tokens") else "-"
    cost = f"${row['cost_usd']:.6f}" if row.get("cost_usd") is not None else "-"
    ms = f"{row['total_ms']:.1f}ms" if row.get("total_ms") is not None else "-"
    parts = [
        when,
        str(row["request_id"]),
        str(row.get("status")),
        str(row.get("model") or "-"),
        str(row.get("backend") or "-"),
        ms,
        f"tokens={tokens}",
        cost,
    ]
    if row.get("cache"):
        parts.append(f"cache={row['cache']}")
    if row.get("guard"):
        parts.append(f"guard={row['guard']}")
    if row.get("error"):
        parts.append(f"error={row['error']!r}")
    return "  ".join(parts)
