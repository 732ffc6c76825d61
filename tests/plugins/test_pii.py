"""pii through the real app: the OpenAI SDK -> gateway -> fake upstream (which echoes the user's text, and
streams it one word per chunk), with the real Presidio analyzer and spaCy model."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.fakes.upstream import FakeUpstream, RecordedRequest
from tests.gateway_server import GatewayServer

EMAIL = "john.doe@example.com"
CARD = "4111 1111 1111 1111"
BROKEN_MODEL = "no_such_spacy_model_xyz"

MODELS: dict[str, dict[str, Any]] = {
    "plain": {},
    "redact-in": {"apply_to": ["input"]},
    "block-in": {"apply_to": ["input"], "action": "block"},
    "pseudo": {"action": "pseudonymize"},
    "redact-out": {"apply_to": ["output"]},
    "mask-out": {"apply_to": ["output"], "action": "mask"},
    "block-out": {"apply_to": ["output"], "action": "block"},
}
BROKEN: dict[str, dict[str, Any]] = {
    "broken-allow": {"model": BROKEN_MODEL, "on_error": "allow"},
    "broken-block": {"model": BROKEN_MODEL, "on_error": "block"},
}


def policy(upstream_url: str, models: dict[str, dict[str, Any]]) -> str:
    """JSON is YAML: the policy as a document, so options are rendered exactly."""
    backend = {
        "name": "fake",
        "type": "openai",
        "base_url": f"{upstream_url}/v1",
        "api_key": "sk-upstream-test",
        "timeouts": {"connect_s": 2, "first_byte_s": 5, "idle_s": 5, "total_s": 30},
    }
    doc = {
        "backends": [backend],
        "models": [
            {
                "name": name,
                "targets": [{"backend": "fake", "model": "echo-model"}],
                "plugins": [{"use": "pii", **options}] if name != "plain" else [],
            }
            for name, options in models.items()
        ],
        "auth": {"keys": []},
        "telemetry": {"access_log": False},
    }
    return json.dumps(doc, indent=1)


@pytest.fixture
def gw(make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream) -> GatewayServer:
    return make_gateway(policy(upstream.url, MODELS))


@pytest.fixture
def sdk(gw: GatewayServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20) as client:
        yield client


class Upstream:
    """What the fake upstream received from the calls made inside the `with` block."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self._upstream = upstream
        self.requests: list[RecordedRequest] = []

    def __enter__(self) -> Upstream:
        self._start = len(self._upstream.requests)
        return self

    def __exit__(self, *exc: object) -> None:
        self.requests = [r for r in list(self._upstream.requests)[self._start :] if "completions" in r.path]

    @property
    def user_texts(self) -> list[str]:
        return [m["content"] for r in self.requests for m in r.body["messages"] if m["role"] == "user"]

    @property
    def raw(self) -> str:
        return json.dumps([r.body for r in self.requests], ensure_ascii=False)


def ask(sdk: OpenAI, model: str, text: str) -> str:
    answer = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return answer.choices[0].message.content or ""


def ask_streaming(sdk: OpenAI, model: str, text: str) -> tuple[list[str], str | None]:
    """(the content pieces as they arrived, the last finish reason)."""
    pieces: list[str] = []
    finish = None
    for chunk in sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], stream=True):
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return pieces, finish


def verdicts(gw: GatewayServer, stage: str, action: str) -> float:
    body = httpx.get(f"{gw.url}/metrics", timeout=10).text
    for line in body.splitlines():
        match = re.fullmatch(r"gateway_guard_verdicts_total\{(.*)\} (\S+)", line)
        if match and set(match[1].split(",")) == {'plugin="pii"', f'stage="{stage}"', f'action="{action}"'}:
            return float(match[2])
    return 0.0


# --- input ------------------------------------------------------------------------------------------------


def test_input_redacted_before_it_goes_upstream(sdk: OpenAI, upstream: FakeUpstream) -> None:
    with Upstream(upstream) as seen:
        answer = ask(sdk, "redact-in", f"Please write to {EMAIL} about the invoice")
    assert seen.user_texts == ["Please write to <EMAIL_ADDRESS> about the invoice"]
    assert EMAIL not in seen.raw
    assert answer == "echo: Please write to <EMAIL_ADDRESS> about the invoice"


def test_every_checked_message_and_content_part_is_redacted(sdk: OpenAI, upstream: FakeUpstream) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Escalations go to ops@example.com."},
        {"role": "user", "content": [{"type": "text", "text": f"My card is {CARD}."}]},
        {"role": "assistant", "content": f"Noted, I will write to {EMAIL}."},
        {"role": "user", "content": "Thanks, and my phone is 010-1234-5678."},
    ]
    with Upstream(upstream) as seen:
        sdk.chat.completions.create(model="redact-in", messages=messages)
    sent = seen.requests[0].body["messages"]
    assert sent[0]["content"] == "Escalations go to <EMAIL_ADDRESS>."
    assert sent[1]["content"] == [{"type": "text", "text": "My card is <CREDIT_CARD>."}]
    assert sent[2]["content"] == "Noted, I will write to <EMAIL_ADDRESS>."
    assert sent[3]["content"] == "Thanks, and my phone is <KR_PHONE>."


def test_clean_text_goes_upstream_unchanged(sdk: OpenAI, upstream: FakeUpstream) -> None:
    text = "What is the capital of France? Answer in 3 words."
    with Upstream(upstream) as seen:
        assert ask(sdk, "redact-in", text) == f"echo: {text}"
    assert seen.user_texts == [text]


@pytest.mark.parametrize("stream", [False, True])
def test_input_block_is_a_400_that_names_no_entity(sdk: OpenAI, upstream: FakeUpstream, stream: bool) -> None:
    with Upstream(upstream) as seen, pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="block-in", messages=[{"role": "user", "content": f"mail {EMAIL}"}], stream=stream
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "content_policy_violation"
    message = caught.value.message.lower()
    assert "email" not in message and "pii" not in message and EMAIL not in message
    assert seen.requests == []


# --- pseudonymize -----------------------------------------------------------------------------------------


def test_pseudonyms_go_upstream_and_originals_come_back(sdk: OpenAI, upstream: FakeUpstream) -> None:
    text = f"I am reachable at {EMAIL} or 010-1234-5678, and so is {EMAIL}"
    with Upstream(upstream) as seen:
        answer = ask(sdk, "pseudo", text)
    assert seen.user_texts == ["I am reachable at <EMAIL_ADDRESS_1> or <KR_PHONE_1>, and so is <EMAIL_ADDRESS_1>"]
    assert EMAIL not in seen.raw and "010-1234-5678" not in seen.raw
    assert answer == f"echo: {text}"


def test_pseudonyms_restored_in_a_streamed_answer(sdk: OpenAI, upstream: FakeUpstream) -> None:
    text = f"Contact {EMAIL} please, or call 010-1234-5678 after lunch"
    with Upstream(upstream) as seen:
        pieces, finish = ask_streaming(sdk, "pseudo", text)
    assert "<EMAIL_ADDRESS_1>" in seen.user_texts[0]
    assert "".join(pieces) == f"echo: {text}"
    assert finish == "stop"


# --- output -----------------------------------------------------------------------------------------------


def test_output_only_redacts_the_answer(sdk: OpenAI, upstream: FakeUpstream) -> None:
    with Upstream(upstream) as seen:
        answer = ask(sdk, "redact-out", f"my mail is {EMAIL}")
    assert seen.user_texts == [f"my mail is {EMAIL}"]  # input is not checked
    assert answer == "echo: my mail is <EMAIL_ADDRESS>"


def test_output_mask_keeps_length(sdk: OpenAI) -> None:
    assert ask(sdk, "mask-out", f"my mail is {EMAIL}") == "echo: my mail is " + "*" * len(EMAIL)


def test_streamed_output_redacted_even_when_split_across_chunks(sdk: OpenAI) -> None:
    tail = "please keep them safe for the whole of next week"
    pieces, finish = ask_streaming(sdk, "redact-out", f"Here is my card {CARD} and my mail {EMAIL}, {tail}")
    assert "".join(pieces) == f"echo: Here is my card <CREDIT_CARD> and my mail <EMAIL_ADDRESS>, {tail}"
    assert not any("4111" in p or "1111" in p or "john" in p for p in pieces)
    assert len(pieces) > 3  # released as it streams, not in one piece at the end
    assert finish == "stop"


def test_streamed_completions_output_redacted(gw: GatewayServer) -> None:
    with OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20) as client:
        stream = client.completions.create(model="redact-out", prompt=f"write {EMAIL} down", stream=True)
        out = "".join(choice.text for chunk in stream for choice in chunk.choices)
    assert out == "echo: write <EMAIL_ADDRESS> down"


def test_output_block_plain(sdk: OpenAI) -> None:
    answer = sdk.chat.completions.create(model="block-out", messages=[{"role": "user", "content": f"mail {EMAIL}"}])
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == ""


def test_output_block_streamed_ends_with_content_filter(sdk: OpenAI) -> None:
    pieces, finish = ask_streaming(sdk, "block-out", f"the address you asked for is {EMAIL} as agreed")
    assert finish == "content_filter"
    assert "john" not in "".join(pieces)


def test_output_block_lets_clean_answers_through(sdk: OpenAI) -> None:
    pieces, finish = ask_streaming(sdk, "block-out", "nothing personal in this one at all")
    assert "".join(pieces) == "echo: nothing personal in this one at all"
    assert finish == "stop"


# --- on_error ---------------------------------------------------------------------------------------------


def test_analyzer_that_cannot_load_follows_on_error(
    make_gateway: Callable[[str], GatewayServer], upstream: FakeUpstream
) -> None:
    gw = make_gateway(policy(upstream.url, BROKEN))  # the model is not installed: nothing is downloaded
    errors_before = verdicts(gw, "input", "error")
    with OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20) as client:
        with Upstream(upstream) as seen:
            assert ask(client, "broken-allow", f"mail {EMAIL}") == f"echo: mail {EMAIL}"
        assert seen.user_texts == [f"mail {EMAIL}"]
        assert verdicts(gw, "input", "error") == errors_before + 1

        with Upstream(upstream) as seen, pytest.raises(openai.BadRequestError) as caught:
            ask(client, "broken-block", "nothing personal here")
        assert caught.value.code == "content_policy_violation"
        assert seen.requests == []

    ready = httpx.get(f"{gw.url}/ready", timeout=10)
    assert ready.status_code == 503  # the fail-closed entry blocks everything: not ready
    checks = ready.json()["checks"]
    details = [check for name, check in checks.items() if name.startswith("pii")]
    assert sorted(check["ok"] for check in details) == [False, True]
    assert all(check["degraded"] and BROKEN_MODEL in check["detail"] for check in details)
