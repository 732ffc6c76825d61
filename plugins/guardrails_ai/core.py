"""guardrails_ai's decision: a worker's report on one text, mapped onto the gateway's actions.

guardrails' on_fail actions and what the gateway does with them (it cannot re-ask the model, and a
text it may not pass on is a text it withholds):

    exception, refrain, filter, reask   -> block    (400 for a request, content_filter for an answer)
    fix, fix_reask                      -> redact   (the validator's fixed text replaces the original)
    noop                                -> flag     (a verdict is recorded, the text passes)

The most serious action among the validators that failed wins: block, then redact, then flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from plugins.guardrails_ai.config import OnFail, ValidatorSpec

Action = Literal["block", "redact", "flag"]
Verdict = Literal["allow", "flag", "redact", "block", "error"]
ON_FAIL_ACTION: dict[OnFail, Action] = {
    "exception": "block",
    "refrain": "block",
    "filter": "block",
    "reask": "block",
    "fix": "redact",
    "fix_reask": "redact",
    "noop": "flag",
}
_SEVERITY: dict[str, int] = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


class ProtocolError(ValueError):
    """The worker sent something that is not a report."""


@dataclass(frozen=True, slots=True)
class Failure:
    index: int  # into the policy's validators
    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    """What the worker found in one text: failures, the fixed text (None: unchanged), or an error."""

    failures: tuple[Failure, ...] = ()
    fixed: str | None = None
    error: str | None = None

    @classmethod
    def from_wire(cls, raw: Any, count: int) -> Report:
        """Parse one entry of a worker's `results`; `count` is the number of validators in the policy."""
        if not isinstance(raw, dict):
            raise ProtocolError(f"a result must be an object, got {type(raw).__name__}")
        fixed, error, failures = raw.get("text"), raw.get("error"), raw.get("failures") or []
        if not (fixed is None or isinstance(fixed, str)) or not (error is None or isinstance(error, str)):
            raise ProtocolError("a result's text and error must be strings or null")
        parsed: list[Failure] = []
        for failure in failures if isinstance(failures, list) else [None]:
            if not isinstance(failure, dict) or not isinstance(index := failure.get("index"), int):
                raise ProtocolError(f"a failure must name a validator by index: {failure!r}")
            if not 0 <= index < count:
                raise ProtocolError(f"a failure names no validator of the policy: {index}")
            parsed.append(Failure(index, str(failure.get("reason") or "failed")))
        return cls(tuple(parsed), fixed, error)


@dataclass(frozen=True, slots=True)
class Fired:
    validator: str  # the validator's label (its `name`, else `use`)
    action: Action
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Verdict
    text: str  # what may go on (the fixed text after a redact)
    fired: tuple[Fired, ...] = ()
    error: str | None = None


def decide(text: str, report: Report, validators: tuple[ValidatorSpec, ...]) -> Outcome:
    """The gateway's action for one checked text."""
    if report.error is not None:
        return Outcome("error", text, error=report.error)
    fired = tuple(
        Fired(validators[f.index].label, ON_FAIL_ACTION[validators[f.index].on_fail], f.reason) for f in report.failures
    )
    worst: Verdict = max((f.action for f in fired), key=_SEVERITY.__getitem__, default="allow")
    if worst == "redact":
        if report.fixed is None:  # the fix changed nothing: only worth a flag
            return Outcome("flag", text, fired)
        return Outcome("redact", report.fixed, fired)
    return Outcome(worst, text, fired)


def most_serious(outcomes: list[Outcome]) -> str:
    """block, error, redact, flag or allow: the action a set of texts' outcomes calls for."""
    order = {"allow": 0, "flag": 1, "redact": 2, "error": 3, "block": 4}
    return max((o.action for o in outcomes), key=order.__getitem__, default="allow")


_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f\u2026]+[\"')\]]*\s+|\n\s*")


def segment_end(text: str, max_chars: int) -> int:
    """Where the checked-and-released part of streamed `text` ends (0: wait for more).

    Validators see whole sentences: the cut is after the last sentence end followed by whitespace (or a
    line break). Past `max_chars` with no sentence end, the text is cut at its last space (else at
    `max_chars`), so a long run-on answer still flows.
    """
    cut = 0
    for match in _SENTENCE_END.finditer(text):
        cut = match.end()
    if cut or len(text) < max_chars:
        return cut
    space = text.rfind(" ", 0, max_chars)
    return space + 1 if space > 0 else max_chars
