"""The rules plugin's pure core: compiling rules, `scan` for matches, `apply` to redact them.

Catastrophic patterns: rules are compiled with the `regex` module (already installed as tiktoken's
dependency) because its matcher takes a `timeout`. One scan of one text gets `timeout_s` for all its
patterns together (per 64 KiB of text, so a long prompt cannot time the scan out on purpose and slip
through); past it, `scan` raises TimeoutError and the plugin applies the guard's `on_error`.
A static "nested quantifier" check was rejected: it refuses useful patterns and still misses
exponential ones such as `(a|aa)+$`; a size cap alone only makes the stall shorter.

The timeout itself costs ~3 us per pattern and text (the regex module's set-up), about as much as the
match, so two kinds of pattern skip it where it cannot be needed (`_spans`):
- keyword lists are alternations of escaped words with one-character lookarounds: matching takes at most
  (text length x keyword characters) steps, so a scan under `UNTIMED_STEPS` of them runs untimed;
- a pattern that starts with plain text (`sk-...`, `AKIA...`, `ghp_...`: `literal_prefix`) cannot match a
  text without that prefix, which one `str` search (case-folded when the rule ignores case) rules out.

Keywords match as whole words, case-insensitively unless the rule says otherwise, with any run of
whitespace between the words of a phrase. At an edge written in a script without spaces between
words and particles (Hangul, Han, kana, Thai) there is no word boundary: "폭탄" matches in "폭탄을".
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

import regex  # type: ignore[import-untyped]  # no type information shipped; wrapped in _Pattern below

from gateway.guarding import Stage

Action = Literal["block", "redact", "flag"]
AllowScope = Literal["match", "text"]
_SEVERITY: dict[Action, int] = {"flag": 0, "redact": 1, "block": 2}
_BUDGET_CHARS = 65536
_UNSPACED = r"\p{Hangul}\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}"
_UNSPACED_CHAR = regex.compile(f"[{_UNSPACED}]")
_WORD_CHAR = regex.compile(r"\w")
# Not next to a letter or digit of a spaced script; next to Hangul still counts as a boundary, so
# "bomb" is found in "bomb을".
_BEFORE = rf"(?<![^\W{_UNSPACED}])"
_AFTER = rf"(?![^\W{_UNSPACED}])"


class _RegexMatch(Protocol):
    partial: bool

    def span(self) -> tuple[int, int]: ...


class _Pattern(Protocol):
    def finditer(
        self,
        string: str,
        pos: int = ...,
        *,
        partial: bool = ...,
        timeout: float | None = ...,
        concurrent: bool | None = ...,
    ) -> Iterator[_RegexMatch]: ...


class RuleSyntaxError(ValueError):
    """A pattern or keyword list that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """A compiled pattern (or keyword list) and the stages it checks."""

    pattern: _Pattern
    stages: frozenset[Stage]
    longest_keyword: int = 0
    bounded: bool = False  # matches no more than longest_keyword characters (single-word keywords)
    steps_per_char: int = 0  # keywords: worst-case matching steps per character of text (0: unknown)
    prefixes: tuple[str, ...] = ()  # every match starts with one of these texts ((): no such guarantee)
    ignore_case: bool = False  # compare `prefixes` case-folded


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    action: Action
    replacement: str
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Everything `scan` needs, built once when the policy is loaded."""

    deny: tuple[CompiledRule, ...]
    allow: tuple[Matcher, ...] = ()
    allow_scope: AllowScope = "match"
    timeout_s: float = 0.25
    checked: frozenset[Stage] = field(init=False)  # the stages some deny rule looks at (`checks`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checked", frozenset(s for r in self.deny for s in r.matcher.stages))

    def budget(self, text: str) -> float:
        """Seconds to scan `text` with every pattern: `timeout_s` per started 64 KiB."""
        return self.timeout_s * (1 + len(text) // _BUDGET_CHARS)

    def checks(self, stage: Stage) -> bool:
        """Whether any deny rule looks at this stage (if not, the plugin need not hold a stream back)."""
        return stage in self.checked

    @property
    def longest_keyword(self) -> int:
        return max((r.matcher.longest_keyword for r in self.deny), default=0)


@dataclass(frozen=True, slots=True)
class Match:
    rule: str
    action: Action
    start: int
    end: int
    replacement: str


UNTIMED_STEPS = 1_000_000  # ~ms of matching: below it, a keyword scan needs no timeout
PREFIX_CHARS = frozenset(string.ascii_letters + string.digits + "-_:/@=")
# Ignoring case, the regex module matches "I" to the dotless i (U+0131), which does not case-fold to "i", and "i"
# to the dotted capital I (U+0130), which case-folds to two characters ("i" + U+0307): in "APİ_KEY" the folded
# text no longer holds "api". A prefix compared case-folded must stop at either. (Every other prefix character
# is safe: what the regex module matches to it case-folds to exactly it; tests/plugins/test_rules_scan.py
# checks that over all of Unicode.)
FOLD_UNSAFE = frozenset("Ii")
_REPEATS = frozenset("*+?{")


def literal_prefix(source: str, ignore_case: bool = False) -> str:
    """Plain text that every match of the regular expression `source` starts with; "" when unsure.

    Deliberately narrow: no alternation or inline flag anywhere, and only characters that mean themselves
    (letters, digits, `-_:/@=`) from the very start; a character followed by a repeat is not required.
    With `ignore_case` the prefix is returned case-folded, for comparison with case-folded text.
    """
    if "|" in source or "(?" in source:
        return ""
    end = 0
    while end < len(source) and source[end] in PREFIX_CHARS and not (ignore_case and source[end] in FOLD_UNSAFE):
        end += 1
    if end < len(source) and source[end] in _REPEATS:
        end -= 1
    if end < 2:
        return ""
    return source[:end].casefold() if ignore_case else source[:end]


def compile_pattern(source: str, case_sensitive: bool) -> _Pattern:
    flags = regex.VERSION0 | (0 if case_sensitive else regex.IGNORECASE)
    try:
        pattern = cast(_Pattern, regex.compile(source, flags))
    except regex.error as exc:
        raise RuleSyntaxError(f"invalid regular expression {source!r}: {exc}") from None
    if regex.fullmatch(pattern, ""):
        raise RuleSyntaxError(f"regular expression {source!r} matches the empty text")
    return pattern


def keyword_regex(keyword: str) -> str:
    """The regex source of one keyword or phrase (see the module docstring)."""
    words = keyword.split()
    if not words:
        raise RuleSyntaxError("a keyword must not be empty")
    body = r"\s+".join(regex.escape(w) for w in words)
    first, last = words[0][0], words[-1][-1]
    before = _BEFORE if _WORD_CHAR.match(first) and not _UNSPACED_CHAR.match(first) else ""
    after = _AFTER if _WORD_CHAR.match(last) and not _UNSPACED_CHAR.match(last) else ""
    return before + body + after


def keyword_prefixes(keywords: Sequence[str], ignore_case: bool) -> tuple[str, ...]:
    """Plain text that every match of a keyword list starts with, one per keyword (`literal_prefix` of its
    first word); () when some keyword has none, as then any text might match."""
    found = tuple(literal_prefix(keyword.split()[0], ignore_case) for keyword in keywords)  # none is empty
    return found if all(found) else ()


def compile_keywords(keywords: Sequence[str], case_sensitive: bool) -> tuple[_Pattern, int]:
    """One alternation for all keywords (longest first), and the longest keyword's length."""
    if not keywords:
        raise RuleSyntaxError("keywords must not be empty")
    ordered = sorted(keywords, key=len, reverse=True)
    source = "|".join(f"(?:{keyword_regex(k)})" for k in ordered)
    return compile_pattern(source, case_sensitive), len(ordered[0])


def scan(text: str, rules: RuleSet, stage: Stage, *, start: int = 0, concurrent: bool = False) -> list[Match]:
    """Deny-rule matches in `text` for `stage` not exempted by the allow-list, in text order.

    Only matches at or after `start` are reported; the text before it is context (already dealt
    with): lookbehinds see it, and an allow-list match may begin in it. A deny match is exempt when
    it lies inside an allow-list match (`allow_scope: match`) or when the text has any allow-list
    match at all (`allow_scope: text`). Raises TimeoutError past the rule set's time budget.
    """
    deadline = time.monotonic() + rules.budget(text)
    # The text case-folded (all of it for the allow-list, from `start` for deny rules), made once if a
    # case-insensitive prefix needs it.
    folded_all: list[str] = []
    folded: list[str] = []
    allowed = [
        span for m in rules.allow if stage in m.stages for span in _spans(m, text, 0, deadline, concurrent, folded_all)
    ]
    if allowed and rules.allow_scope == "text":
        return []
    found: list[Match] = []
    for rule in rules.deny:
        if stage not in rule.matcher.stages:
            continue
        for s, e in _spans(rule.matcher, text, start, deadline, concurrent, folded):
            if not any(a <= s and e <= b for a, b in allowed):
                found.append(Match(rule.name, rule.action, s, e, rule.replacement))
    found.sort(key=lambda m: (m.start, -m.end))
    return found


def _spans(
    matcher: Matcher, text: str, start: int, deadline: float, concurrent: bool, folded: list[str]
) -> Iterator[tuple[int, int]]:
    """Non-empty matches at or after `start`. `folded` caches text[start:].casefold() across matchers."""
    prefixes = matcher.prefixes
    if prefixes:
        if matcher.ignore_case:
            if not folded:
                folded.append(text[start:].casefold())
            haystack, offset = folded[0], 0  # `prefixes` are stored case-folded
        else:
            haystack, offset = text, start
        for prefix in prefixes:  # a loop, not any(): no generator per matcher and text
            if haystack.find(prefix, offset) >= 0:
                break
        else:
            return
    if matcher.steps_per_char and (len(text) - start + 1) * matcher.steps_per_char <= UNTIMED_STEPS:
        found = matcher.pattern.finditer(text, start, concurrent=concurrent or None)
    else:
        found = matcher.pattern.finditer(text, start, timeout=_left(deadline), concurrent=concurrent or None)
    for match in found:
        s, e = match.span()
        if e > s:  # an empty match has nothing to block or redact
            yield s, e


def growing(text: str, rules: RuleSet, stage: Stage, *, start: int = 0, concurrent: bool = False) -> int | None:
    """Where a deny or allow-list match that more text could complete begins (None: nowhere).

    For streams: `text` ends where the upstream has got to, so a phrase or pattern may be cut off
    ("ignore previous instruc"); nothing from this point on may be released yet.
    """
    deadline = time.monotonic() + rules.budget(text)
    matchers = [r.matcher for r in rules.deny] + list(rules.allow)
    earliest: int | None = None
    for matcher in matchers:
        if stage not in matcher.stages or matcher.bounded:
            continue  # a bounded match fits in the stream's hold-back: never cut off where text is released
        found = matcher.pattern.finditer(
            text, start, partial=True, timeout=_left(deadline), concurrent=concurrent or None
        )
        for match in found:
            s, e = match.span()
            if match.partial and e > s and (earliest is None or s < earliest):
                earliest = s
    return earliest


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("rules: scan time budget spent")
    return left


def apply(text: str, matches: Iterable[Match]) -> str:
    """`text` with every redact match replaced; overlapping ones become one replacement (the first's)."""
    spans = sorted((m for m in matches if m.action == "redact"), key=lambda m: (m.start, -m.end))
    out: list[str] = []
    done = 0
    for m in spans:
        if m.end <= done:
            continue  # inside the span already replaced
        if m.start < done:
            done = m.end  # overlaps the previous one: extend it, keep its replacement
            continue
        out += [text[done : m.start], m.replacement]
        done = m.end
    out.append(text[done:])
    return "".join(out)


def worst(matches: Iterable[Match]) -> Action | None:
    """The most serious action among the matches: block, then redact, then flag."""
    return max((m.action for m in matches), key=_SEVERITY.__getitem__, default=None)


def fired(matches: Iterable[Match]) -> dict[tuple[str, Action], int]:
    """How often each (rule, action) matched, least serious first (so the last verdict is the worst)."""
    counts: dict[tuple[str, Action], int] = {}
    for m in sorted(matches, key=lambda m: _SEVERITY[m.action]):
        counts[(m.rule, m.action)] = counts.get((m.rule, m.action), 0) + 1
    return counts


def settled_cut(matches: Iterable[Match], cut: int) -> int:
    """Move a stream's release point back before any match that crosses it: no match is split."""
    spans = sorted(((m.start, m.end) for m in matches), reverse=True)
    for s, e in spans:  # from the right, so a cut moved left meets every match it now crosses
        if s < cut < e:
            cut = s
    return cut
