"""The rules plugin's options: deny rules, an allow-list, and how streams are held back.

Every pattern is compiled while the policy loads: a bad one fails the load with its path
(`plugins[0].rules[2].pattern: invalid regular expression ...`), and requests reuse the compiled form.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gateway.guarding import GuardConfig, Stage
from plugins.rules.core import (
    Action,
    AllowScope,
    CompiledRule,
    Matcher,
    RuleSet,
    RuleSyntaxError,
    compile_keywords,
    compile_pattern,
    keyword_prefixes,
    literal_prefix,
)


class _Matching(BaseModel):
    """What a rule or allow-list entry looks for: a regex or a keyword list (exactly one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str | None = Field(None, description="A regular expression (Python syntax, `regex` module).")
    keywords: tuple[str, ...] | None = Field(
        None,
        description="Words or phrases matched as whole words (substrings in Hangul, Han, kana and Thai); "
        "any whitespace matches between the words of a phrase.",
    )
    case_sensitive: bool = Field(False, description="Match letter case exactly.")
    stages: tuple[Stage, ...] = Field(("input", "output"), min_length=1, description="Texts this entry checks.")
    _matcher: Matcher | None = PrivateAttr(None)

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_pattern(value, case_sensitive=True)
            except RuleSyntaxError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords_compile(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            try:
                compile_keywords(value, case_sensitive=True)
            except RuleSyntaxError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_of_pattern_or_keywords(self) -> _Matching:
        if (self.pattern is None) == (self.keywords is None):
            raise ValueError("give exactly one of `pattern` or `keywords`")
        return self

    def model_post_init(self, context: Any) -> None:
        if self.pattern is not None:
            prefix = literal_prefix(self.pattern, ignore_case=not self.case_sensitive)
            self._matcher = Matcher(
                compile_pattern(self.pattern, self.case_sensitive),
                frozenset(self.stages),
                prefixes=(prefix,) if prefix else (),
                ignore_case=not self.case_sensitive,
            )
        elif self.keywords is not None:
            pattern, longest = compile_keywords(self.keywords, self.case_sensitive)
            bounded = not any(len(k.split()) > 1 for k in self.keywords)
            steps = sum(len(k) for k in self.keywords) + len(self.keywords)
            self._matcher = Matcher(
                pattern,
                frozenset(self.stages),
                longest,
                bounded,
                steps_per_char=steps,
                prefixes=keyword_prefixes(self.keywords, ignore_case=not self.case_sensitive),
                ignore_case=not self.case_sensitive,
            )

    @property
    def matcher(self) -> Matcher:
        assert self._matcher is not None  # set by model_post_init once validation passed
        return self._matcher


class ContentRule(_Matching):
    """A deny rule: what to do with text that matches."""

    name: str = Field(min_length=1, description="Named in logs, traces and metrics; never shown to the client.")
    action: Action = Field("block", description="block the request or answer, redact the match, or flag (record).")
    replacement: str = Field("[REDACTED]", description="What a redacted match is replaced with.")

    def compiled(self) -> CompiledRule:
        return CompiledRule(self.name, self.action, self.replacement, self.matcher)


class AllowEntry(_Matching):
    """An allow-list entry: deny matches inside its matches (or, by `allow_scope`, its whole text) pass."""


class RulesConfig(GuardConfig):
    rules: tuple[ContentRule, ...] = Field((), description="Deny rules, all checked against every text.")
    allow: tuple[AllowEntry, ...] = Field((), description="Allow-list: exempts text from the deny rules.")
    allow_scope: AllowScope = Field(
        "match",
        description="match: a deny match is exempt only if it lies inside an allow-list match; "
        "text: any allow-list match exempts the whole text (message or answer) it is in.",
    )
    hold_chars: int = Field(
        64,
        ge=1,
        le=65536,
        description="Streamed text always held back, so a match split across chunks is seen whole and a "
        "word's end is known (at least the longest keyword plus one).",
    )
    release_chars: int = Field(
        16,
        ge=1,
        le=65536,
        description="Streamed text is checked and released once this much more than the hold-back has "
        "arrived: fewer scans per chunk, at the cost of slightly burstier streams.",
    )
    hold_max_chars: int = Field(
        4096,
        ge=1,
        le=1048576,
        description="Most streamed text held back while a match may still be growing (a long phrase or "
        "regex); past it the text is released, so a match longer than this may be missed in streams.",
    )
    inline_chars: int = Field(
        16384, ge=0, description="Texts longer than this are scanned in a worker thread, off the event loop."
    )
    timeout_s: float = Field(
        0.25,
        gt=0,
        le=10,
        description="Time budget to scan one text with every pattern, per 64 KiB of text; past it, on_error applies.",
    )

    @field_validator("rules")
    @classmethod
    def _names_unique(cls, value: tuple[ContentRule, ...]) -> tuple[ContentRule, ...]:
        names = [r.name for r in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(twice)}")
        return value

    def model_post_init(self, context: Any) -> None:
        _ = self.ruleset, self.hold  # compiled at load, then plain attribute reads on the request path

    @functools.cached_property
    def ruleset(self) -> RuleSet:
        return RuleSet(
            tuple(r.compiled() for r in self.rules),
            tuple(a.matcher for a in self.allow),
            self.allow_scope,
            self.timeout_s,
        )

    @functools.cached_property
    def hold(self) -> int:
        """Characters a stream holds back: enough for the longest keyword plus one to see its end."""
        return max(self.hold_chars, self.ruleset.longest_keyword + 1)
