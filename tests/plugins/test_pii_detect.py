"""pii's pure core: `detect` with the real Presidio analyzer and spaCy model, `transform`, the vault, and the
Korean recognizers' scoring, plus the config's validation."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import tldextract
from pydantic import ValidationError

import plugins.pii as pii
from plugins.pii import PiiConfig, Vault, detect, protect_answer, transform
from plugins.pii.core import Finding, merge, release_point, worth_analysing
from plugins.pii.recognizers import rrn_checksum_ok, rrn_score


def cfg(**options: Any) -> PiiConfig:
    return PiiConfig.model_validate(options)


DEFAULT = cfg()


def found(text: str, config: PiiConfig = DEFAULT) -> list[tuple[str, str]]:
    return [(f.entity, text[f.start : f.end]) for f in detect(text, config)]


def redacted(text: str, config: PiiConfig = DEFAULT) -> str:
    return transform(text, detect(text, config), config, None)


def test_exported_names() -> None:
    assert sorted(pii.__all__) == sorted(
        [
            "DEFAULT_ENTITIES",
            "PLUGIN",
            "AnalyzerUnavailable",
            "Finding",
            "PiiConfig",
            "PiiGuard",
            "Vault",
            "detect",
            "protect_answer",
            "transform",
        ]
    )
    assert pii.PLUGIN.name == "pii"


# --- generic entities -------------------------------------------------------------------------------------


def test_email_is_redacted() -> None:
    assert redacted("Write to john.doe@example.com today") == "Write to <EMAIL_ADDRESS> today"


@pytest.mark.parametrize("text", ["call 212-555-0123", "reach me at (212) 555-0123", "my phone is +1 415 555 2671"])
def test_us_phone_numbers(text: str) -> None:
    assert [entity for entity, _ in found(text)] == ["PHONE_NUMBER"]


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500000000000004"])
def test_credit_cards(card: str) -> None:
    assert found(f"my card is {card}, thanks") == [("CREDIT_CARD", card)]


def test_card_number_failing_luhn_is_not_a_card() -> None:
    assert found("my card is 4111 1111 1111 1112") == []


def test_iban_ssn_and_ip() -> None:
    text = "IBAN DE89370400440532013000, ssn 536-22-1234, host 10.20.30.40"
    assert found(text) == [
        ("IBAN_CODE", "DE89370400440532013000"),
        ("US_SSN", "536-22-1234"),
        ("IP_ADDRESS", "10.20.30.40"),
    ]


def test_person_found_by_spacy_and_only_when_configured() -> None:
    text = "Yesterday John Smith sent the report."
    assert found(text) == [("PERSON", "John Smith")]
    assert found(text, cfg(entities=["EMAIL_ADDRESS"])) == []


def test_hangul_is_never_taken_for_a_person() -> None:
    # The English model tags Korean words as PERSON almost at random; those findings are dropped.
    assert found("안녕하세요. 오늘 날씨가 좋네요. 감사합니다, 좋은 하루 되세요.") == []
    assert found("Ask José García") == [("PERSON", "José García")]


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "The meeting is on 2024-01-15 at 10:30.",
        "Order ORD-2024-000123 ships on 2024.03.05.",
        "Invoice 2024-0042 is due; see version 1.2.3 of the terms.",
    ],
)
def test_ordinary_text_has_no_pii(text: str) -> None:
    assert found(text) == []


def test_allow_list_values_are_kept() -> None:
    config = cfg(allow_list=["support@example.com"])
    assert found("mail support@example.com or bob@example.com", config) == [("EMAIL_ADDRESS", "bob@example.com")]


# --- Korean resident registration numbers ---------------------------------------------------------------


def test_rrn_checksum() -> None:
    assert rrn_checksum_ok("9001011234568")
    assert not rrn_checksum_ok("9001011234567")


@pytest.mark.parametrize(
    ("candidate", "score"),
    [
        ("900101-1234568", 1.0),  # checksum holds
        ("9001011234568", 0.85),  # same digits, no dash: more often some other number
        ("900101-1234567", 0.4),  # checksum fails, born 1990: needs a context word
        ("210315-3123456", 0.6),  # checksum fails but born 2021: random serials since Oct 2020
        ("901301-1234567", None),  # month 13
        ("900230-1234567", None),  # 30 February
        ("900101-5234567", None),  # 5: a foreigner's number, not an RRN
        ("300101-3234567", None),  # born 2030: in the future
    ],
)
def test_rrn_score(candidate: str, score: float | None) -> None:
    assert rrn_score(candidate, today=datetime.date(2026, 11, 1)) == score


def test_rrn_with_valid_checksum_is_found() -> None:
    assert found("주민등록번호 900101-1234568 입니다") == [("KR_RRN", "900101-1234568")]
    assert found("id 9001011234568") == [("KR_RRN", "9001011234568")]


def test_rrn_with_bad_checksum_needs_context() -> None:
    assert found("ref 900101-1234567") == []
    assert found("주민번호 900101-1234567") == [("KR_RRN", "900101-1234567")]
    assert found("my RRN is 900101-1234567") == [("KR_RRN", "900101-1234567")]


@pytest.mark.parametrize(
    "text",
    [
        "order 20240115-1234567",  # an 8-digit date in front: not an RRN
        "batch 901301-1234567",  # no such date
        "run 2024-01-15 1234567",
        "tracking 1234567890123",
    ],
)
def test_rrn_negatives(text: str) -> None:
    assert [e for e, _ in found(text) if e == "KR_RRN"] == []


# --- Korean phone numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "010-1234-5678",
        "010 1234 5678",
        "010.1234.5678",
        "01012345678",
        "011-123-4567",
        "+82 10-1234-5678",
        "+82-10-1234-5678",
        "+821012345678",
        "02-123-4567",
        "02-1234-5678",
        "(02) 1234-5678",
        "031-123-4567",
        "051-1234-5678",
        "+82 2 1234 5678",
    ],
)
def test_korean_phone_numbers(number: str) -> None:
    assert found(f"메모 {number} 감사합니다") == [("KR_PHONE", number)]


def test_default_recognizers_alone_miss_korean_mobiles() -> None:
    assert found("010-1234-5678", cfg(entities=["PHONE_NUMBER"])) == []


def test_bare_area_code_digits_need_context() -> None:
    assert found("code 0212345678") == []
    assert found("주문번호 0212345678") == []  # an order number: 번호 alone is no phone context
    assert found("전화 0212345678") == [("KR_PHONE", "0212345678")]


@pytest.mark.parametrize(
    "text",
    [
        "date 2024-01-15",
        "order 20240115-0012",
        "ORD-010-2024",
        "price 1,010,000 won",
        "version 010.12.3",
        "serial 0101234567890123",
    ],
)
def test_korean_phone_negatives(text: str) -> None:
    assert [e for e, _ in found(text) if e == "KR_PHONE"] == []


def test_korean_text_with_several_entities() -> None:
    text = "김민준 고객님(010-9876-5432, minjun.kim@example.co.kr) 주민번호 850315-1234563"
    entities = [e for e, _ in found(text)]
    assert {"KR_PHONE", "EMAIL_ADDRESS", "KR_RRN"} <= set(entities)
    out = redacted(text)
    for value in ("010-9876-5432", "minjun.kim@example.co.kr", "850315-1234563"):
        assert value not in out


# --- thresholds -------------------------------------------------------------------------------------------


def test_threshold_decides_and_context_raises_the_score() -> None:
    strict = cfg(score_threshold=0.6)
    assert found("212-555-0123", DEFAULT) == [("PHONE_NUMBER", "212-555-0123")]
    assert found("212-555-0123", strict) == []
    assert found("my phone is 212-555-0123", strict) == [("PHONE_NUMBER", "212-555-0123")]
    assert [f.score for f in detect("my phone is 212-555-0123", strict)] == [pytest.approx(0.85)]


# --- transform --------------------------------------------------------------------------------------------


def test_mask_keeps_the_length() -> None:
    text = "mail john@example.com now"
    assert redacted(text, cfg(action="mask")) == "mail " + "*" * len("john@example.com") + " now"
    assert redacted(text, cfg(action="mask", mask_char="#")) == "mail ################ now"


def test_block_leaves_text_alone() -> None:
    text = "mail john@example.com now"
    config = cfg(action="block")
    assert detect(text, config)
    assert transform(text, detect(text, config), config, None) == text


def test_pseudonymize_numbers_per_entity_and_reuses_placeholders() -> None:
    config = cfg(action="pseudonymize")
    vault = Vault()
    text = "a@example.com, b@example.com, again a@example.com, card 4111 1111 1111 1111"
    out = transform(text, detect(text, config), config, vault)
    assert out == "<EMAIL_ADDRESS_1>, <EMAIL_ADDRESS_2>, again <EMAIL_ADDRESS_1>, card <CREDIT_CARD_1>"
    second = "and c@example.com"  # a later message of the same request continues the numbering
    assert transform(second, detect(second, config), config, vault) == "and <EMAIL_ADDRESS_3>"
    assert vault.originals["<EMAIL_ADDRESS_2>"] == "b@example.com"


def test_pseudonymize_without_a_vault_is_an_error() -> None:
    with pytest.raises(ValueError, match="vault"):
        transform("x", [Finding("EMAIL_ADDRESS", 0, 1, 1.0)], cfg(action="pseudonymize"), None)


def test_restore_gives_back_originals_and_leaves_unknown_placeholders() -> None:
    vault = Vault()
    vault.placeholder("EMAIL_ADDRESS", "john@example.com")
    assert vault.restore("to <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_9>") == "to john@example.com and <EMAIL_ADDRESS_9>"


def test_protect_answer_restores_without_redacting_the_restored_value() -> None:
    config = cfg(action="redact")
    vault = Vault()
    vault.placeholder("EMAIL_ADDRESS", "john@example.com")
    answer = "I will mail <EMAIL_ADDRESS_1> and copy boss@example.com"
    out = protect_answer(answer, detect(answer, config), config, vault)
    assert out == "I will mail john@example.com and copy <EMAIL_ADDRESS>"


def test_protect_answer_pseudonymizes_new_pii_after_the_known_ones() -> None:
    config = cfg(action="pseudonymize")
    vault = Vault()
    vault.placeholder("EMAIL_ADDRESS", "john@example.com")
    answer = "<EMAIL_ADDRESS_1>, cc boss@example.com"
    assert protect_answer(answer, detect(answer, config), config, vault) == "john@example.com, cc <EMAIL_ADDRESS_2>"


def test_overlapping_findings_merge_under_the_best_name() -> None:
    merged = merge([Finding("PHONE_NUMBER", 4, 16, 0.5), Finding("KR_PHONE", 0, 16, 0.75), Finding("X", 20, 22, 1)])
    assert merged == [Finding("KR_PHONE", 0, 16, 0.75), Finding("X", 20, 22, 1)]


def test_release_point_never_splits_a_finding_or_a_placeholder() -> None:
    window = "mail john@example.com soon"
    email = Finding("EMAIL_ADDRESS", 5, 21, 1.0)
    assert release_point(window, 10, [email], placeholders=False) == 5
    assert release_point(window, 22, [email], placeholders=False) == 22
    assert release_point("to <EMAIL_ADD", 13, [], placeholders=True) == 3
    assert release_point("to <EMAIL_ADDRESS_1> ok", 21, [], placeholders=True) == 21


# --- cost: what is analysed -------------------------------------------------------------------------------


class _Exploding:
    def analyze(self, **_: Any) -> Any:
        raise AssertionError("the analyzer should not run")


def test_empty_text_is_never_analysed() -> None:
    assert detect("", DEFAULT, _Exploding()) == []  # type: ignore[arg-type]
    assert detect("   \n", DEFAULT, _Exploding()) == []  # type: ignore[arg-type]


def test_text_without_digits_or_at_skips_pattern_only_entities() -> None:
    patterns_only = cfg(entities=["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "KR_RRN", "KR_PHONE"])
    assert detect("no personal data in here at all", patterns_only, _Exploding()) == []  # type: ignore[arg-type]
    assert worth_analysing("mail me: a@b.co", patterns_only.entities)
    assert worth_analysing("call 010-1234-5678", patterns_only.entities)
    assert worth_analysing("no digits here", DEFAULT.entities)  # PERSON needs spaCy whatever the text
    assert worth_analysing("fe::ab", ("IP_ADDRESS",))


# --- offline ------------------------------------------------------------------------------------------------


def test_email_validation_never_downloads_the_suffix_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from plugins.pii import recognizers

    def no_network(*_: Any, **__: Any) -> Any:
        raise AssertionError("tldextract tried to fetch the public suffix list")

    monkeypatch.setattr(tldextract.cache.DiskCache, "cached_fetch_url", no_network)
    monkeypatch.setattr(tldextract, "extract", no_network)
    recognizers._offline_tld_extract.cache_clear()
    assert found("write to kim@mail.example.co.kr") == [("EMAIL_ADDRESS", "kim@mail.example.co.kr")]


# --- config -------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    assert DEFAULT.action == "redact"
    assert DEFAULT.score_threshold == 0.5
    assert {"EMAIL_ADDRESS", "PERSON", "KR_RRN", "KR_PHONE"} <= set(DEFAULT.entities)
    assert "assistant" in DEFAULT.roles  # earlier answers carry restored values back upstream


def test_unknown_entity_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(ValidationError, match="did you mean 'EMAIL_ADDRESS'"):
        cfg(entities=["EMAIL_ADRESS"])


@pytest.mark.parametrize(
    "options", [{"mask_char": "**"}, {"action": "erase"}, {"score_threshold": 1.5}, {"hold_char": 10}]
)
def test_invalid_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        cfg(**options)
