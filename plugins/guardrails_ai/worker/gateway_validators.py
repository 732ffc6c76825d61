"""Example validators the worker always registers (nothing is downloaded from the guardrails hub).

    gateway/competitor_check   names from a list, as whole words (any case); fix: each becomes `replacement`
    gateway/deny_pattern       a regular expression (a profanity list, an internal code name); fix: replaced

A validator of your own is the same shape: a module that registers a `Validator` subclass under a name,
listed in the policy's `modules` (found on `paths` or the worker's sys.path).
"""

from __future__ import annotations

import re
from typing import Any

from guardrails.validators import (  # type: ignore[import-not-found]
    FailResult,
    PassResult,
    Validator,
    register_validator,
)


@register_validator(name="gateway/competitor_check", data_type="string")
class CompetitorCheck(Validator):  # type: ignore[misc]
    """Fails when the text names a competitor; the fix replaces each mention."""

    def __init__(
        self, competitors: list[str], replacement: str = "[COMPETITOR]", on_fail: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(on_fail=on_fail, competitors=competitors, replacement=replacement, **kwargs)
        if not competitors:
            raise TypeError("competitors must name at least one competitor")
        words = sorted((re.escape(name) for name in competitors), key=len, reverse=True)
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)
        self._replacement = replacement

    def _validate(self, value: Any, metadata: dict[str, Any]) -> Any:
        found = self._pattern.findall(str(value))
        if not found:
            return PassResult()
        return FailResult(
            error_message=f"names {len(found)} competitor(s)",
            fix_value=self._pattern.sub(self._replacement, str(value)),
        )


@register_validator(name="gateway/deny_pattern", data_type="string")
class DenyPattern(Validator):  # type: ignore[misc]
    """Fails when a regular expression matches; the fix replaces every match."""

    def __init__(
        self,
        pattern: str,
        replacement: str = "[REDACTED]",
        ignore_case: bool = True,
        on_fail: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(on_fail=on_fail, pattern=pattern, replacement=replacement, ignore_case=ignore_case, **kwargs)
        try:
            self._pattern = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise TypeError(f"pattern {pattern!r}: {exc}") from None
        self._replacement = replacement

    def _validate(self, value: Any, metadata: dict[str, Any]) -> Any:
        count = sum(1 for m in self._pattern.finditer(str(value)) if m.end() > m.start())
        if not count:
            return PassResult()
        return FailResult(
            error_message=f"{count} match(es)", fix_value=self._pattern.sub(self._replacement, str(value))
        )
