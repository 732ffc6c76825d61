"""Building Presidio's analyzer: once per (spaCy model, language) in a process, never downloading anything.

Loading spaCy takes a second or two and the engine holds no per-request state, so plugin instances with
the same model and language (several models' policies, a policy reload) share one engine.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider

from plugins.pii.recognizers import (
    GatewayPhoneRecognizer,
    KoreanPhoneRecognizer,
    KoreanRrnRecognizer,
    OfflineEmailRecognizer,
)

log = logging.getLogger("gateway.pii")

# Presidio's recognizers replaced by the gateway's own (see recognizers.py), and Presidio's Korean RRN one,
# loaded for language "ko", which would report the same numbers twice.
_REPLACED = ("EmailRecognizer", "PhoneRecognizer", "KrRrnRecognizer")
# Runs once after loading, so the first request does not pay for lazily built regexes and phone metadata.
_WARM_UP = "Write to John Smith at john@example.com or 010-1234-5678, card 4111 1111 1111 1111, 10.0.0.1."

# spaCy's labels as Presidio entities (Presidio's conf/spacy.yaml); the rest are dropped rather than kept with
# a warning logged for every request that mentions an amount of money.
_NER = {
    "model_to_presidio_entity_mapping": {
        "PER": "PERSON",
        "PERSON": "PERSON",
        "NORP": "NRP",
        "FAC": "LOCATION",
        "LOC": "LOCATION",
        "GPE": "LOCATION",
        "ORG": "ORGANIZATION",
        "DATE": "DATE_TIME",
        "TIME": "DATE_TIME",
    },
    "labels_to_ignore": [
        "CARDINAL",
        "EVENT",
        "LANGUAGE",
        "LAW",
        "MONEY",
        "ORDINAL",
        "PERCENT",
        "PRODUCT",
        "QUANTITY",
        "WORK_OF_ART",
    ],
}

_lock = threading.Lock()
_engines: dict[tuple[str, str], AnalyzerEngine] = {}


class AnalyzerUnavailable(RuntimeError):
    """The analyzer could not be built (a model that is not installed, a language it does not cover)."""


def shared_analyzer(model: str, language: str) -> AnalyzerEngine:
    """The process's analyzer for this model and language, built on first use (blocking: call off the loop)."""
    with _lock:
        engine = _engines.get((model, language))
        if engine is None:
            engine = build_analyzer(model, language)
            _engines[(model, language)] = engine
        return engine


def build_analyzer(model: str, language: str) -> AnalyzerEngine:
    # Presidio would `spacy download` a model it cannot find: refuse instead, the gateway runs offline.
    if not (spacy.util.is_package(model) or Path(model).exists()):
        raise AnalyzerUnavailable(f"spaCy model {model!r} is not installed (models are never downloaded)")
    try:
        provider = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": language, "model_name": model}],
                "ner_model_configuration": _NER,
            }
        )
        nlp_engine = provider.create_engine()
        # Presidio reads tokens, lemmas and entities, never the dependency parse: the parser is pure cost.
        for nlp in getattr(nlp_engine, "nlp", {}).values():
            if "parser" in nlp.pipe_names:
                nlp.disable_pipe("parser")
        registry = RecognizerRegistry(supported_languages=[language])
        registry.load_predefined_recognizers(languages=[language], nlp_engine=nlp_engine)
        for name in _REPLACED:
            registry.remove_recognizer(name)
        for recognizer in (
            OfflineEmailRecognizer(language),
            GatewayPhoneRecognizer(language),
            KoreanRrnRecognizer(language),
            KoreanPhoneRecognizer(language),
        ):
            registry.add_recognizer(recognizer)
        engine = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[language])
        engine.analyze(_WARM_UP, language=language)
    except Exception as exc:
        raise AnalyzerUnavailable(f"the PII analyzer could not be built: {type(exc).__name__}: {exc}") from exc
    log.info("PII analyzer ready (spaCy model %s, language %s)", model, language)
    return engine
