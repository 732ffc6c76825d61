"""How long to wait before retrying: full-jitter exponential backoff that honours Retry-After.

Full jitter (a uniform draw between 0 and the exponential bound) spreads the retries of many
clients that failed together, so they do not hit a recovering backend in lockstep.
"""

from __future__ import annotations

import math
import random
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_MAX_EXPONENT = 64  # 2**64 * any sane base is far past any cap; bounds the float math


def backoff_s(
    attempt: int,
    *,
    base_s: float = 0.25,
    cap_s: float = 8.0,
    retry_after: str | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Without Retry-After: uniform(0, min(cap_s, base_s * 2**attempt)).
    With a Retry-After (delta seconds or an HTTP date) of at most cap_s: the larger of it and the
    jittered wait, so the backend's wish is honoured. A Retry-After over cap_s returns math.inf:
    this target will not take the call soon, so the caller should move on to another target (or
    give up) rather than sleep. A Retry-After that cannot be parsed is ignored.
    """
    if attempt < 0:
        raise ValueError("attempt must not be negative")
    if base_s < 0 or cap_s < 0:
        raise ValueError("base_s and cap_s must not be negative")
    bound = min(cap_s, base_s * 2.0 ** min(attempt, _MAX_EXPONENT))
    jittered = (rng or random).uniform(0, bound)
    wanted = parse_retry_after(retry_after) if retry_after is not None else None
    if wanted is None:
        return jittered
    if wanted > cap_s:
        return math.inf
    return max(wanted, jittered)


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (0 for a date in the past); None when it is neither form.

    `now` is wall-clock time (time.time()), as HTTP dates are.
    """
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
