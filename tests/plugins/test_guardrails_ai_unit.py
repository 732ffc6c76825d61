"""guardrails_ai's pure parts: the on_fail mapping, report parsing, stream segments, options at load."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.loader import PolicyError, load_text
from plugins.guardrails_ai import ON_FAIL_ACTION, GuardrailsAiConfig, Report, ValidatorSpec, decide, segment_end
from plugins.guardrails_ai.core import Failure, ProtocolError, most_serious


def specs(*on_fail: str) -> tuple[ValidatorSpec, ...]:
    return tuple(ValidatorSpec.model_validate({"use": f"v/{i}", "on_fail": f}) for i, f in enumerate(on_fail))


@pytest.mark.parametrize(
    ("on_fail", "action"),
    [
        ("exception", "block"),
        ("refrain", "block"),
        ("filter", "block"),
        ("reask", "block"),
        ("fix", "redact"),
        ("fix_reask", "redact"),
        ("noop", "flag"),
    ],
)
def test_each_on_fail_maps_onto_a_gateway_action(on_fail: str, action: str) -> None:
    assert ON_FAIL_ACTION[on_fail] == action  # type: ignore[index]
    outcome = decide("text", Report((Failure(0, "bad"),), fixed="TEXT"), specs(on_fail))
    assert outcome.action == action
    assert outcome.text == ("TEXT" if action == "redact" else "text")
    assert [(f.validator, f.action, f.reason) for f in outcome.fired] == [("v/0", action, "bad")]


def test_the_most_serious_failure_wins() -> None:
    validators = specs("noop", "fix", "exception")
    assert decide("t", Report((Failure(0, "a"), Failure(1, "b")), fixed="T"), validators).action == "redact"
    everything = Report((Failure(0, "a"), Failure(1, "b"), Failure(2, "c")), fixed="T")
    blocked = decide("t", everything, validators)
    assert blocked.action == "block"
    assert blocked.text == "t"  # a blocked text is never the fixed one
    assert len(blocked.fired) == 3


def test_no_failure_allows_and_an_error_is_an_error() -> None:
    assert decide("t", Report(), specs("exception")).action == "allow"
    errored = decide("t", Report(error="boom"), specs("exception"))
    assert (errored.action, errored.error, errored.text) == ("error", "boom", "t")


def test_a_fix_that_changed_nothing_is_only_a_flag() -> None:
    outcome = decide("t", Report((Failure(0, "x"),), fixed=None), specs("fix"))
    assert (outcome.action, outcome.text) == ("flag", "t")


def test_most_serious_orders_outcomes() -> None:
    validators = specs("noop", "fix")
    flag = decide("t", Report((Failure(0, "x"),)), validators)
    redact = decide("t", Report((Failure(1, "x"),), fixed="T"), validators)
    error = decide("t", Report(error="e"), validators)
    assert most_serious([]) == "allow"
    assert most_serious([flag, redact]) == "redact"
    assert most_serious([flag, error, redact]) == "error"


@pytest.mark.parametrize(
    "raw",
    [
        "not an object",
        {"failures": [{"index": 5, "reason": "x"}]},  # no such validator
        {"failures": [{"reason": "x"}]},
        {"failures": "x"},
        {"text": 3},
        {"error": ["x"]},
    ],
)
def test_a_malformed_report_is_a_protocol_error(raw: Any) -> None:
    with pytest.raises(ProtocolError):
        Report.from_wire(raw, 2)


def test_a_report_parses() -> None:
    raw = {"text": "fixed", "failures": [{"index": 1, "reason": "r"}], "error": None}
    assert Report.from_wire(raw, 2) == Report((Failure(1, "r"),), "fixed", None)


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("Hello there", 0),  # no sentence end yet
        ("Hello. There", 7),
        ("One. Two! Three? Fo", 17),
        ("pi is 3.14 and", 0),  # a dot inside a number ends nothing
        ("line one\nline two", 9),
        ("끝났다。 다음", 5),
        ('He said "stop." Then', 16),
    ],
)
def test_segment_end_cuts_after_the_last_sentence(text: str, cut: int) -> None:
    assert segment_end(text, 256) == cut


def test_segment_end_cuts_a_long_run_on_text_at_a_space() -> None:
    text = "word " * 20
    cut = segment_end(text, 32)
    assert 0 < cut <= 32 and text[cut - 1] == " "
    assert segment_end("x" * 40, 32) == 32  # no space at all: cut at the limit


POLICY = """
backends: [{{name: b, type: openai, base_url: "http://127.0.0.1:9/v1"}}]
models:
  - name: m
    targets: [{{backend: b, model: x}}]
    plugins: [{plugin}]
"""


def test_options_load_with_defaults() -> None:
    plugin = "{use: guardrails_ai, validators: [{use: gateway/deny_pattern, args: {pattern: x}, stages: [output]}]}"
    loaded = load_text(POLICY.format(plugin=plugin))
    cfg = loaded.config_for(loaded.policy.models[0].plugins[0])
    assert isinstance(cfg, GuardrailsAiConfig)
    assert cfg.validators[0].on_fail == "exception"
    assert cfg.stage_validators("input") == ()
    assert cfg.stage_validators("output") == (0,)
    assert cfg.python == ".venv-guardrails/bin/python"


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("{use: guardrails_ai, validators: [{use: a, on_fial: fix}]}", "unknown key (did you mean 'on_fail'?)"),
        ("{use: guardrails_ai, validators: [{use: a, on_fail: custom}]}", "on_fail"),
        ("{use: guardrails_ai, validators: []}", "validators"),
        ("{use: guardrails_ai, validators: [{use: a}], timeout_s: 0}", "timeout_s"),
    ],
)
def test_bad_options_fail_the_load_with_a_path(plugin: str, message: str) -> None:
    with pytest.raises(PolicyError) as failure:
        load_text(POLICY.format(plugin=plugin))
    assert "models[0].plugins[0]" in str(failure.value)
    assert message in str(failure.value)
