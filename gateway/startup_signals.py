"""A SIGHUP that arrives while the gateway is starting (models loading, a guardrails worker importing)
is remembered and replayed once the server is up, instead of killing the process (SIGHUP's default).

Kept free of heavy imports: `gateway serve` installs it before importing the server.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_HUP_WHILE_STARTING = threading.Event()


def remember_reloads_while_starting() -> None:
    with contextlib.suppress(ValueError):  # not the main thread: nothing to install
        signal.signal(signal.SIGHUP, lambda signum, frame: _HUP_WHILE_STARTING.set())


def reload_requested_while_starting() -> bool:
    """True once if a SIGHUP came before the server's own handler was in place."""
    if not _HUP_WHILE_STARTING.is_set():
        return False
    _HUP_WHILE_STARTING.clear()
    return True
