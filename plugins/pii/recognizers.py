"""Recognizers added to Presidio's: Korean RRNs and phone numbers, and two stock ones made fit for a gateway.

- `KoreanRrnRecognizer`: YYMMDD-GNNNNNN with a real, past birth date; its score says how likely the
  number is real (checksum, and whether it was issued after October 2020, when the checksum was dropped).
- `KoreanPhoneRecognizer`: mobile (010, 011, 016-019), Seoul (02), area codes and 070, with or without
  separators, and +82 forms. A bare run of digits scores below the default threshold unless a context word
  (phone, 전화, 연락처 ...) stands before it.
- `OfflineEmailRecognizer`: Presidio's email recognizer validates the domain with tldextract, whose default
  extractor downloads the public suffix list at first use; this one reads the snapshot bundled with
  tldextract and never touches the network.
- `GatewayPhoneRecognizer`: Presidio's phone recognizer scoring a valid number written like one ("+1 ...",
  "212-555-0123") 0.5 instead of 0.4, so it is found at the default threshold without a context word ("call"
  is a spaCy stop word and never counts as context); other digit runs keep 0.4.
"""

from __future__ import annotations

import datetime
import functools
import re

import tldextract
from presidio_analyzer import Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import EmailRecognizer, PhoneRecognizer

_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
# RRNs issued from October 2020 end in random digits: no checksum to rely on for people born since.
_RANDOM_SERIALS_FROM = 2020


def rrn_checksum_ok(digits: str) -> bool:
    total = sum(int(d) * w for d, w in zip(digits[:12], _RRN_WEIGHTS, strict=True))
    return (11 - total % 11) % 10 == int(digits[12])


def rrn_score(candidate: str, today: datetime.date | None = None) -> float | None:
    """How likely `candidate` (13 digits, maybe a dash after the sixth) is a real RRN; None: it is not one.

    A valid checksum is near-certain; a bad one is still plausible for someone born since 2020. Without
    the dash the same digits are more often an order or account number, so they score a little lower.
    """
    digits = candidate.replace("-", "")
    if len(digits) != 13 or not digits.isdigit() or digits[6] not in "1234":
        return None
    century = 1900 if digits[6] in "12" else 2000
    try:
        born = datetime.date(century + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        return None
    if born > (today or datetime.date.today()):
        return None
    dashed = "-" in candidate
    if rrn_checksum_ok(digits):
        return 1.0 if dashed else 0.85
    if born.year >= _RANDOM_SERIALS_FROM:
        return 0.6 if dashed else 0.45
    return 0.4 if dashed else 0.3


class KoreanRrnRecognizer(PatternRecognizer):
    PATTERNS = [
        Pattern("KR RRN", r"(?<!\d)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])-?[1-4]\d{6}(?!\d)", 0.4),
    ]
    CONTEXT = ["주민", "주민등록", "주민번호", "rrn", "resident", "registration"]

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="KR_RRN",
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            supported_language=supported_language,
            name="GatewayKoreanRrnRecognizer",
        )

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        scored = []
        for result in super().analyze(text, entities, nlp_artifacts, regex_flags):
            score = rrn_score(text[result.start : result.end])
            if score is not None:
                result.score = score
                scored.append(result)
        return scored


_AREA = r"(?:2|3[1-3]|4[1-4]|5[1-5]|6[1-4]|70)"  # Seoul, area codes, internet phones
_SEP = r"[-. ]"


class KoreanPhoneRecognizer(PatternRecognizer):
    PATTERNS = [
        Pattern("KR mobile", rf"(?<![\d+])01[016789]{_SEP}\d{{3,4}}{_SEP}\d{{4}}(?!\d)", 0.7),
        Pattern("KR mobile (010, digits only)", r"(?<![\d+])010\d{8}(?!\d)", 0.5),
        Pattern("KR mobile (old prefix, digits only)", r"(?<![\d+])01[16789]\d{7,8}(?!\d)", 0.35),
        Pattern("KR mobile (+82)", rf"\+82{_SEP}?(?:\(0\))?1[016789]{_SEP}?\d{{3,4}}{_SEP}?\d{{4}}(?!\d)", 0.75),
        Pattern("KR landline", rf"(?<![\d+])(?:0{_AREA}|\(0{_AREA}\)){_SEP}?\d{{3,4}}{_SEP}\d{{4}}(?!\d)", 0.6),
        Pattern("KR landline (digits only)", rf"(?<![\d+])0{_AREA}\d{{7,8}}(?!\d)", 0.3),
        Pattern("KR landline (+82)", rf"\+82{_SEP}?(?:\(0\))?{_AREA}{_SEP}?\d{{3,4}}{_SEP}?\d{{4}}(?!\d)", 0.7),
    ]
    # Context words match as substrings, so never 번호 ("number"): 주문번호 is an order number.
    CONTEXT = ["전화", "휴대", "핸드폰", "연락", "phone", "mobile", "tel", "cell", "contact"]

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entity="KR_PHONE",
            patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
            supported_language=supported_language,
            name="GatewayKoreanPhoneRecognizer",
        )


@functools.cache
def _offline_tld_extract() -> tldextract.TLDExtract:
    # No suffix list URLs and no cache folder: the list bundled with tldextract, read once.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class OfflineEmailRecognizer(EmailRecognizer):
    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_language=supported_language, name="GatewayEmailRecognizer")

    def validate_result(self, pattern_text: str) -> bool:
        return _offline_tld_extract()(pattern_text).fqdn != ""


class GatewayPhoneRecognizer(PhoneRecognizer):
    SCORE = 0.5
    _STOCK_SCORE = 0.4

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_language=supported_language, name="GatewayPhoneRecognizer")

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        # Presidio's annotation omits None, which its own engine passes when there are no NLP artifacts.
        results = super().analyze(text, entities, nlp_artifacts)  # type: ignore[arg-type]
        for result in results:
            if not _phone_shaped(text[result.start : result.end]):
                result.score = self._STOCK_SCORE
        return results


def _phone_shaped(number: str) -> bool:
    """Written the way people write phone numbers: +country code, or three or more groups of digits.

    "212-555-0123" and "+44 20 7946 0958" are; "2024-000123" (an order number a phone library still
    accepts) and a bare run of ten digits keep Presidio's score, below the default threshold.
    """
    return number.startswith("+") or len(_DIGIT_GROUPS.findall(number)) >= 3


_DIGIT_GROUPS = re.compile(r"\d+")
