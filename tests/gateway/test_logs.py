"""The serving process's log format: the same lines as logging's own formatter, made cheaper."""

from __future__ import annotations

import logging

import pytest

from gateway.logs import FORMAT, Formatter


@pytest.mark.parametrize("tz", ["UTC", "Asia/Seoul", "America/St_Johns", "Asia/Kathmandu"])
def test_lines_match_loggings_own_formatter_across_seconds(tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        ours, theirs = Formatter(FORMAT), logging.Formatter(FORMAT)
        start = 1_795_500_000.0
        # Within one second, across second and minute boundaries, and back in time (a clock step).
        for created in (start, start + 0.0004, start + 0.9996, start + 1.0, start + 59.5, start + 61.25, start - 3.7):
            record = logging.LogRecord("gateway.access", logging.INFO, "", 0, '{"status":200}', None, None)
            record.created, record.msecs = created, int((created - int(created)) * 1000)
            assert ours.format(record) == theirs.format(record)
        record.created = start
        assert ours.formatTime(record, "%H") == theirs.formatTime(record, "%H")  # an explicit datefmt still works
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
