"""rules: the plugin's phases driven directly (streams through the real chain, with chunk borders no
upstream would pick), where the HTTP tests cannot reach."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plugins.rules.plugin as rules_plugin
from gateway.chain import Chain
from gateway.guarding import GuardVerdict
from gateway.plugin import CONTINUE, Caller, Plugin, RequestContext, Respond
from gateway.policy import ModelRoute, Target
from plugins.rules import Rules, RulesConfig, apply, scan


def plugin(*rules: dict[str, Any], **options: Any) -> Rules:
    return Rules(RulesConfig.model_validate({"rules": list(rules), **options}))


def ctx(endpoint: str = "chat", body: dict[str, Any] | None = None) -> RequestContext:
    return RequestContext(
        request_id="r",
        endpoint=endpoint,  # type: ignore[arg-type]
        body=body or {},
        headers={},
        caller=Caller("c", False),
        route=ModelRoute(name="m", targets=[Target(backend="b", model="x")]),
        stream=True,
    )


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


def text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": "c1", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}


@dataclass
class Streamed:
    chunks: list[dict[str, Any]]
    ended_by: Respond | None

    @property
    def text(self) -> str:
        out = []
        for chunk in self.chunks:
            for choice in chunk["choices"]:
                out.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
        return "".join(out)

    @property
    def finish_reasons(self) -> list[str]:
        chunks = [*self.chunks, *([self.ended_by.body] if self.ended_by else [])]
        return [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c.get("finish_reason")]


async def stream(plugins: list[Plugin], pieces: list[str], *, endpoint: str = "chat", finish: bool = True) -> Streamed:
    """Run pieces through the chain's stream phase as the relay does (role chunk, text, finish chunk)."""
    chain, context = Chain(plugins), ctx(endpoint)
    upstream: list[dict[str, Any]] = []
    if endpoint == "chat":
        upstream = [chat_chunk({"role": "assistant", "content": ""})]
        upstream += [chat_chunk({"content": p}) for p in pieces]
        upstream += [chat_chunk({}, "stop")] if finish else []
    else:
        upstream = [text_chunk(p) for p in pieces] + ([text_chunk("", "stop")] if finish else [])
    sent: list[dict[str, Any]] = []
    for chunk in upstream:
        out = await chain.chunk(context, copy.deepcopy(chunk), len(plugins))
        if isinstance(out, Respond):
            return Streamed(sent, out)
        sent += out
    tail = await chain.stream_end(context, len(plugins))
    if isinstance(tail, Respond):
        return Streamed(sent, tail)
    return Streamed(sent + tail, None)


def chars(text: str) -> list[str]:
    return list(text)


async def test_keyword_split_inside_a_word_is_blocked_before_any_of_it_leaves() -> None:
    rules = plugin({"name": "w", "keywords": ["forbidden"]})
    out = await stream([rules], chars("this is a forbidden thing to say"))
    assert out.ended_by is not None and out.finish_reasons == ["content_filter"]
    assert "forbidden" not in out.text and "forbid" not in out.text
    assert out.ended_by.body["choices"][0] == {"index": 0, "finish_reason": "content_filter", "delta": {}}


async def test_redaction_across_chunk_borders_matches_the_whole_text_redaction() -> None:
    rules = plugin({"name": "w", "keywords": ["forbidden word"], "action": "redact", "replacement": "***"})
    out = await stream([rules], ["a forb", "idden w", "ord and a", " forbidden", " word."])
    assert out.ended_by is None
    assert out.text == "a *** and a ***."
    assert out.finish_reasons == ["stop"]
    assert out.chunks[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_whole_word_is_decided_only_once_the_next_character_is_known() -> None:
    rules = plugin({"name": "w", "keywords": ["ass"]})
    out = await stream([rules], ["as", "s", "ert it", " passes"])
    assert out.ended_by is None and out.text == "assert it passes"


async def test_text_is_held_back_then_flushed_by_the_finish_chunk() -> None:
    rules = plugin({"name": "w", "keywords": ["nope"]}, hold_chars=10)
    pieces = ["one ", "two ", "three ", "four ", "five ", "six"]
    out = await stream([rules], pieces)
    assert out.text == "".join(pieces)
    texts = [c["choices"][0]["delta"].get("content") for c in out.chunks]
    assert texts[-1] is None and out.chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert texts[-2] and texts[-2].endswith("six")  # released just before the finish chunk


async def test_held_text_is_flushed_at_stream_end_without_a_finish_chunk() -> None:
    rules = plugin({"name": "w", "keywords": ["secret"], "action": "redact"})
    out = await stream([rules], ["my ", "secret"], finish=False)
    assert out.text == "my [REDACTED]"


async def test_block_found_only_at_stream_end() -> None:
    rules = plugin({"name": "w", "keywords": ["secret"]})
    out = await stream([rules], ["my ", "secret"], finish=False)
    assert out.ended_by is not None and "secret" not in out.text
    assert out.finish_reasons == ["content_filter"]


async def test_completions_stream() -> None:
    rules = plugin({"name": "w", "keywords": ["secret"], "action": "redact"})
    out = await stream([rules], ["the sec", "ret is ", "out"], endpoint="completions")
    assert out.text == "the [REDACTED] is out"
    blocked = await stream([plugin({"name": "w", "keywords": ["secret"]})], ["the sec", "ret"], endpoint="completions")
    assert blocked.ended_by is not None and blocked.ended_by.body["object"] == "text_completion"


async def test_no_output_rules_means_no_hold_back() -> None:
    rules = plugin({"name": "w", "keywords": ["secret"], "stages": ["input"]})
    out = await stream([rules], ["a ", "secret ", "b"])
    assert [c["choices"][0]["delta"].get("content") for c in out.chunks] == ["", "a ", "secret ", "b", None]


async def test_two_rules_plugins_in_one_chain_keep_their_own_state() -> None:
    first = plugin({"name": "a", "keywords": ["alpha"], "action": "redact", "replacement": "[A]"})
    second = plugin({"name": "b", "keywords": ["beta"], "action": "redact", "replacement": "[B]"}, hold_chars=3)
    out = await stream([first, second], chars("alpha and beta and gamma"))
    assert out.text == "[A] and [B] and gamma"


async def test_phrase_longer_than_the_hold_is_still_caught() -> None:
    rules = plugin({"name": "w", "keywords": ["bad word"], "action": "redact"}, hold_chars=1)
    out = await stream([rules], chars("x bad" + " " * 40 + "word y"))
    assert out.text == "x [REDACTED] y"


async def test_regex_match_longer_than_the_hold_is_still_caught() -> None:
    rules = plugin({"name": "key", "pattern": r"-----BEGIN KEY-----[\s\S]*?-----END KEY-----"}, hold_chars=8)
    body = "-----BEGIN KEY-----\n" + "QUJD" * 50 + "\n-----END KEY-----"
    out = await stream([rules], ["here: ", *[body[i : i + 5] for i in range(0, len(body), 5)], " done"])
    assert out.ended_by is not None
    assert out.text == "here: "


async def test_hold_max_chars_bounds_what_a_growing_match_holds_back() -> None:
    rules = plugin({"name": "w", "pattern": "a[^z]*z"}, hold_chars=1, hold_max_chars=20)
    out = await stream([rules], chars("a" + "b" * 100))
    assert out.ended_by is None and out.text == "a" + "b" * 100
    released_early = [c for c in out.chunks[:-2] if c["choices"][0]["delta"].get("content")]
    assert len(released_early) > 3  # streamed in pieces, not all held to the end


@pytest.mark.parametrize(("on_error", "blocked"), [("allow", False), ("block", True)])
async def test_scan_timeout_follows_on_error(on_error: str, blocked: bool) -> None:
    rules = plugin({"name": "slow", "pattern": r"(a|aa)+$"}, timeout_s=0.02, on_error=on_error)
    out = await stream([rules], ["a" * 60, "!"])
    assert (out.ended_by is not None) is blocked


WORDS = st.sampled_from(["bad", "word", "bad word", "badword", "ok", "wordy", "폭탄", "을", " ", "  ", "\n", "."])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(WORDS, max_size=30),
    st.lists(st.integers(1, 7), min_size=1, max_size=40),
    st.integers(1, 12),
    st.integers(1, 20),
)
async def test_any_chunking_redacts_like_the_whole_text(
    words: list[str], sizes: list[int], hold_chars: int, release_chars: int
) -> None:
    text = "".join(words)
    pieces, at, i = [], 0, 0
    while at < len(text):
        pieces.append(text[at : at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    rules = plugin(
        {"name": "w", "keywords": ["bad word", "폭탄"], "action": "redact", "replacement": "<x>"},
        {"name": "f", "keywords": ["word"], "action": "flag"},
        hold_chars=hold_chars,
        release_chars=release_chars,
    )
    out = await stream([rules], pieces)
    assert out.text == apply(text, scan(text, rules.config.ruleset, "output"))

    blocker = plugin(
        {"name": "w", "keywords": ["bad word", "폭탄"]}, hold_chars=hold_chars, release_chars=release_chars
    )
    out = await stream([blocker], pieces)
    matches = scan(text, blocker.config.ruleset, "output")
    assert (out.ended_by is not None) == bool(matches)
    assert text.startswith(out.text)
    assert all(m.start >= len(out.text) for m in matches)  # not even the start of a match leaves


# --- request phase -------------------------------------------------------------------------------------


def chat_body(*texts: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": t} for t in texts]}


async def test_long_texts_are_scanned_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return scan(*args, **kwargs)

    monkeypatch.setattr(rules_plugin, "scan", spy)
    rules = plugin({"name": "s", "keywords": ["secret"], "action": "redact"}, inline_chars=10)
    context = ctx(body=chat_body("short", "a long text with a secret in it"))
    assert await rules.on_request(context) is CONTINUE
    assert [m["content"] for m in context.body["messages"]] == ["short", "a long text with a [REDACTED] in it"]
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()


async def test_input_redacts_every_message_and_part_but_only_checked_roles() -> None:
    rules = plugin({"name": "s", "keywords": ["secret"], "action": "redact"}, roles=["user"])
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "secret system"},
            {"role": "user", "content": [{"type": "text", "text": "a secret"}, {"type": "image_url"}]},
        ],
    }
    context = ctx(body=body)
    await rules.on_request(context)
    assert body["messages"][0]["content"] == "secret system"
    assert body["messages"][1]["content"][0]["text"] == "a [REDACTED]"
    verdict = context.get(GuardVerdict)
    assert verdict is not None and (verdict.rule, verdict.stage, verdict.action) == ("s", "input", "redact")


@pytest.mark.parametrize(("on_error", "blocked"), [("allow", False), ("block", True)])
async def test_request_scan_timeout_follows_on_error(on_error: str, blocked: bool) -> None:
    rules = plugin({"name": "slow", "pattern": r"(a|aa)+$"}, timeout_s=0.02, on_error=on_error)
    decision = await rules.on_request(ctx(body=chat_body("a" * 60 + "!")))
    assert isinstance(decision, Respond) is blocked
