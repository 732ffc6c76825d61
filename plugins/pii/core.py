"""The plugin's decisions as plain functions: what is PII in a text, and what the text becomes.

detect(text, cfg)                          findings, merged and ordered (blocking: run it off the loop)
transform(text, findings, cfg, vault)      redacted, masked or pseudonymized text (block: unchanged)
protect_answer(text, findings, cfg, vault) an answer: the vault's placeholders restored, new PII transformed
release_point(window, cut, findings, ...)  where streamed text may be cut without splitting PII
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from presidio_analyzer import AnalyzerEngine

from plugins.pii.config import PiiConfig
from plugins.pii.engine import shared_analyzer

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")
_PARTIAL_PLACEHOLDER = re.compile(r"<[A-Z0-9_]*$")

# Entities that only pattern recognizers find, and what any text holding one must contain. When every configured
# entity is one of these, a text without any such sign cannot hold PII and is not analysed at all.
_DIGIT = r"\d"
_NEEDS = {
    "EMAIL_ADDRESS": "@",
    "IP_ADDRESS": r"\d|::|[a-f]:[a-f]",  # IPv6 may be all hex letters ("fe::ab"), never "Note: ..."
    "PHONE_NUMBER": _DIGIT,
    "CREDIT_CARD": _DIGIT,
    "IBAN_CODE": _DIGIT,
    "US_SSN": _DIGIT,
    "US_ITIN": _DIGIT,
    "US_BANK_NUMBER": _DIGIT,
    "UK_NHS": _DIGIT,
    "KR_RRN": _DIGIT,
    "KR_PHONE": _DIGIT,
}

# The English model's NER tags Hangul (and other non-Latin) words as PERSON almost at random ("감사합니다"),
# and never finds a Korean name: its findings without a Latin letter are not trusted.
_NER_RECOGNIZER = "SpacyRecognizer"
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str
    start: int
    end: int
    score: float


@dataclass(slots=True)
class Vault:
    """One request's pseudonyms: `<EMAIL_ADDRESS_1>` and the value it stands for, numbered per entity type."""

    originals: dict[str, str] = field(default_factory=dict)
    _placeholders: dict[tuple[str, str], str] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        found = self._placeholders.get(key)
        if found is None:
            number = self._counts[entity] = self._counts.get(entity, 0) + 1
            found = self._placeholders[key] = f"<{entity}_{number}>"
            self.originals[found] = value
        return found

    def restore(self, text: str) -> str:
        if not self.originals:
            return text
        return PLACEHOLDER.sub(lambda m: self.originals.get(m.group(), m.group()), text)

    def __bool__(self) -> bool:
        return bool(self.originals)


@functools.cache
def _trigger(entities: tuple[str, ...]) -> re.Pattern[str] | None:
    if any(entity not in _NEEDS for entity in entities):
        return None
    return re.compile("|".join(sorted({_NEEDS[e] for e in entities})), re.IGNORECASE)


def worth_analysing(text: str, entities: tuple[str, ...]) -> bool:
    if not text.strip():
        return False
    trigger = _trigger(entities)
    return trigger is None or trigger.search(text) is not None


def detect(text: str, cfg: PiiConfig, analyzer: AnalyzerEngine | None = None) -> list[Finding]:
    """PII in `text` at or above the threshold, overlaps merged, in order. CPU-heavy: never on the event loop."""
    if not worth_analysing(text, cfg.entities):
        return []
    engine = analyzer if analyzer is not None else shared_analyzer(cfg.model, cfg.language)
    results = engine.analyze(
        text=text,
        language=cfg.language,
        entities=list(cfg.entities),
        score_threshold=cfg.score_threshold,
        allow_list=list(cfg.allow_list) or None,
    )
    return merge(
        Finding(r.entity_type, r.start, r.end, r.score)
        for r in results
        if _LATIN.search(text, r.start, r.end)
        or (r.recognition_metadata or {}).get("recognizer_name") != _NER_RECOGNIZER
    )


def merge(findings: Iterable[Finding]) -> list[Finding]:
    """Overlapping findings become one span, named after the most confident of them."""
    merged: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        last = merged[-1] if merged else None
        if last is not None and f.start < last.end:
            best = last if last.score >= f.score else f
            merged[-1] = Finding(best.entity, last.start, max(last.end, f.end), max(last.score, f.score))
        else:
            merged.append(f)
    return merged


def transform(text: str, findings: list[Finding], cfg: PiiConfig, vault: Vault | None) -> str:
    """`text` with each finding replaced as `cfg.action` says; findings must be merged (as `detect` gives)."""
    if cfg.action == "block" or not findings:
        return text
    if cfg.action == "pseudonymize" and vault is None:
        raise ValueError("pseudonymize needs a vault to record its placeholders in")
    out: list[str] = []
    at = 0
    for f in findings:
        out.append(text[at : f.start])
        out.append(_replacement(text[f.start : f.end], f.entity, cfg, vault))
        at = f.end
    out.append(text[at:])
    return "".join(out)


def _replacement(value: str, entity: str, cfg: PiiConfig, vault: Vault | None) -> str:
    if cfg.action == "mask":
        return cfg.mask_char * len(value)
    if cfg.action == "pseudonymize" and vault is not None:
        return vault.placeholder(entity, value)
    return f"<{entity}>"


def protect_answer(text: str, findings: list[Finding], cfg: PiiConfig, vault: Vault | None) -> str:
    """An answer for the client: new PII transformed, the vault's placeholders back to the caller's values.

    One pass, so a restored value is never detected (or pseudonymized) again, and a placeholder the model
    echoes is never taken for PII of its own.
    """
    if not vault:
        return transform(text, findings, cfg, vault)
    spans = [m.span() for m in PLACEHOLDER.finditer(text)]
    fresh = [f for f in findings if not any(f.start < end and start < f.end for start, end in spans)]
    out: list[str] = []
    at = 0
    for start, end in spans:
        out.append(transform(text[at:start], _shift(fresh, at, start), cfg, vault))
        out.append(vault.restore(text[start:end]))
        at = end
    out.append(transform(text[at:], _shift(fresh, at, len(text)), cfg, vault))
    return "".join(out)


def _shift(findings: list[Finding], start: int, end: int) -> list[Finding]:
    return [Finding(f.entity, f.start - start, f.end - start, f.score) for f in findings if start <= f.start < end]


def release_point(window: str, cut: int, findings: list[Finding], *, placeholders: bool) -> int:
    """Move a proposed cut in streamed text back so no finding, nor a placeholder still arriving, is split."""
    while True:
        moved = cut
        for f in findings:
            if f.start < moved < f.end:
                moved = f.start
        if placeholders and (partial := _PARTIAL_PLACEHOLDER.search(window, 0, moved)) is not None:
            moved = partial.start()
        if moved == cut:
            return cut
        cut = moved
