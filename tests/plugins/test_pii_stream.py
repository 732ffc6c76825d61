"""pii's phases driven directly, chunk by chunk: the hold-back that sees PII split across chunks, the
finishing chunk, the flush at the end, and pseudonyms restored across chunk borders."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from gateway.guarding import GuardVerdict, chunk_text
from gateway.plugin import CONTINUE, Caller, Emit, RequestContext, Respond
from gateway.policy import ModelRoute, Target
from plugins.pii import PiiConfig, PiiGuard


async def guard(**options: Any) -> PiiGuard:
    plugin = PiiGuard(PiiConfig.model_validate(options))
    await plugin.start()
    assert plugin.load_error is None
    return plugin


def context(text: str = "hello", endpoint: str = "chat") -> RequestContext:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}], "stream": True}
    return RequestContext(
        request_id="r1",
        endpoint=endpoint,  # type: ignore[arg-type]
        body=body,
        headers={},
        caller=Caller("c", False),
        route=ModelRoute(name="m", targets=[Target(backend="b", model="x")]),
        stream=True,
    )


def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {} if text is None else {"content": text}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def run(plugin: PiiGuard, ctx: RequestContext, pieces: list[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """Stream `pieces` then a finishing chunk; (chunks sent to the client, how many left after each piece)."""
    sent: list[dict[str, Any]] = []
    per_piece: list[int] = []
    for piece in [*pieces, None]:
        item = chunk(piece, "stop" if piece is None else None)
        decision = await plugin.on_stream_chunk(ctx, item)
        assert not isinstance(decision, Respond)
        out = [item] if decision is CONTINUE else list(decision.chunks)  # type: ignore[union-attr]
        per_piece.append(len(out))
        sent.extend(out)
    end = await plugin.on_stream_end(ctx)
    assert not isinstance(end, Respond)
    if isinstance(end, Emit):
        sent.extend(end.chunks)
    return sent, per_piece


class _Recording:
    """Stands in for the plugin's analyzer: records (thread, text) of every analysis and delegates."""

    def __init__(self, plugin: PiiGuard) -> None:
        assert plugin.analyzer is not None
        self.real = plugin.analyzer
        self.calls: list[tuple[str, str]] = []
        plugin.analyzer = self  # type: ignore[assignment]

    def analyze(self, **kwargs: Any) -> Any:
        self.calls.append((threading.current_thread().name, kwargs["text"]))
        return self.real.analyze(**kwargs)


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(chunk_text(c) for c in chunks)


@pytest.mark.parametrize(
    "pieces",
    [
        ["Write to jo", "hn@exam", "ple.com please, thanks a lot for all of it"],
        ["card ", "4111 ", "1111 ", "1111 ", "1111", " is mine, do not share it with anyone"],
        ["전화는 010-", "1234-", "5678 입니다. 감사합니다, 좋은 하루 되세요."],
    ],
)
async def test_pii_split_across_chunks_never_leaves(pieces: list[str]) -> None:
    plugin = await guard(apply_to=["output"])
    sent, _ = await run(plugin, context(), pieces)
    out = text_of(sent)
    assert out.count("<") == 1 and ">" in out
    for secret in ("john", "hn@", "4111", "1111", "010-", "5678"):
        assert secret not in out
    assert sent[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in sent[:-1])


SENTENCE = "Please find the attached report for the third quarter of this year, with all the numbers we discussed."


@pytest.mark.parametrize(("batch", "least_released"), [(0, 10), (16, 3)])
async def test_safe_text_is_released_before_the_end(batch: int, least_released: int) -> None:
    plugin = await guard(apply_to=["output"], hold_chars=16, stream_batch_chars=batch)
    words = [f"{w} " for w in SENTENCE.split()]
    sent, per_piece = await run(plugin, context(), words)
    assert text_of(sent) == "".join(words)
    assert sum(per_piece[:-1]) >= least_released  # released while streaming, not all at the finish
    assert per_piece[0] == 0  # the first word is held back


async def test_batching_saves_analyses() -> None:
    counts = {}
    for batch in (0, 16):
        plugin = await guard(apply_to=["output"], hold_chars=16, stream_batch_chars=batch)
        spy = _Recording(plugin)
        await run(plugin, context(), [f"{w} " for w in SENTENCE.split()])
        counts[batch] = len(spy.calls)
    assert counts[16] * 2 <= counts[0]


async def test_role_chunk_passes_untouched() -> None:
    plugin = await guard(apply_to=["output"])
    role = {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    assert await plugin.on_stream_chunk(context(), role) is CONTINUE


async def test_block_ends_the_stream_with_content_filter_before_the_pii_leaves() -> None:
    plugin = await guard(apply_to=["output"], action="block")
    ctx = context()
    released: list[dict[str, Any]] = []
    decision: Any = None
    for piece in ["Sure, the address is jo", "hn@example.com and more", None]:
        decision = await plugin.on_stream_chunk(ctx, chunk(piece, None if piece else "stop"))
        if isinstance(decision, Respond):
            break
        released.extend(decision.chunks)
    assert isinstance(decision, Respond)
    assert decision.body["choices"][0]["finish_reason"] == "content_filter"
    assert "jo" not in text_of(released)
    verdict = ctx.get(GuardVerdict)
    assert verdict is not None and verdict.action == "block" and verdict.rule == "EMAIL_ADDRESS"


async def test_stream_end_flushes_what_is_held() -> None:
    plugin = await guard(apply_to=["output"], action="mask")
    ctx = context()
    assert await plugin.on_stream_chunk(ctx, chunk("mail bob@example.com")) == Emit(())
    end = await plugin.on_stream_end(ctx)
    assert isinstance(end, Emit)
    assert text_of(list(end.chunks)) == "mail " + "*" * len("bob@example.com")
    assert end.chunks[0]["id"] == "c1"


async def test_pseudonyms_restored_across_chunk_borders() -> None:
    plugin = await guard(action="pseudonymize")
    ctx = context("my mail is john@example.com and my phone 010-1234-5678")
    assert await plugin.on_request(ctx) is CONTINUE
    sent_up = ctx.body["messages"][0]["content"]
    assert sent_up == "my mail is <EMAIL_ADDRESS_1> and my phone <KR_PHONE_1>"
    pieces = ["I will write to <EMAIL", "_ADDRESS", "_1> and call <KR_PH", "ONE_1>", " tomorrow."]
    sent, _ = await run(plugin, ctx, pieces)
    assert text_of(sent) == "I will write to john@example.com and call 010-1234-5678 tomorrow."


async def test_completions_stream_text_choice() -> None:
    plugin = await guard(apply_to=["output"])
    ctx = context(endpoint="completions")
    first = {"id": "c1", "object": "text_completion", "choices": [{"index": 0, "text": "hi bob@"}]}
    last = {
        "id": "c1",
        "object": "text_completion",
        "choices": [{"index": 0, "text": "ex.com", "finish_reason": "stop"}],
    }
    assert await plugin.on_stream_chunk(ctx, first) == Emit(())
    done = await plugin.on_stream_chunk(ctx, last)
    assert isinstance(done, Emit)
    assert [c["choices"][0]["text"] for c in done.chunks] == ["hi <EMAIL_ADDRESS>", ""]
    assert done.chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_nothing_to_do_without_output_stage_or_pseudonyms() -> None:
    plugin = await guard(apply_to=["input"])
    ctx = context()
    assert await plugin.on_stream_chunk(ctx, chunk("bob@example.com")) is CONTINUE
    assert await plugin.on_stream_end(ctx) is CONTINUE


# --- failures and threads ---------------------------------------------------------------------------------


class _Failing:
    def analyze(self, **_: Any) -> Any:
        raise RuntimeError("spaCy fell over")


@pytest.mark.parametrize("on_error", ["allow", "block"])
async def test_analysis_that_raises_follows_on_error(on_error: str) -> None:
    plugin = await guard(on_error=on_error)
    plugin.analyzer = _Failing()  # type: ignore[assignment]
    ctx = context("mail bob@example.com")
    decision = await plugin.on_request(ctx)
    verdict = ctx.get(GuardVerdict)
    assert verdict is not None and verdict.stage == "input"
    if on_error == "allow":
        assert decision is CONTINUE
        assert ctx.body["messages"][0]["content"] == "mail bob@example.com"
        assert verdict.action == "error"
    else:
        assert isinstance(decision, Respond) and decision.status == 400
        assert verdict.action == "block"
    streamed = await plugin.on_stream_chunk(ctx, chunk("mail bob@example.com", "stop"))
    if on_error == "allow":
        assert isinstance(streamed, Emit) and text_of(list(streamed.chunks)) == "mail bob@example.com"
    else:
        assert isinstance(streamed, Respond)
        assert streamed.body["choices"][0]["finish_reason"] == "content_filter"


async def test_analysis_runs_off_the_event_loop() -> None:
    plugin = await guard(apply_to=["input"])
    spy = _Recording(plugin)
    ctx = context("mail bob@example.com")
    assert await plugin.on_request(ctx) is CONTINUE
    assert ctx.body["messages"][0]["content"] == "mail <EMAIL_ADDRESS>"
    assert spy.calls and threading.main_thread().name not in [thread for thread, _ in spy.calls]


async def test_entries_of_one_chain_keep_their_own_state() -> None:
    first, second = await guard(action="pseudonymize"), await guard(action="pseudonymize", apply_to=["output"])
    ctx = context("mail bob@example.com")
    await first.on_request(ctx)
    await second.on_request(ctx)
    answer: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "to <EMAIL_ADDRESS_1>"}}]
    }
    await second.on_response(ctx, answer)  # its own vault is empty: the placeholder is not its to restore
    assert answer["choices"][0]["message"]["content"] == "to <EMAIL_ADDRESS_1>"
    await first.on_response(ctx, answer)
    assert answer["choices"][0]["message"]["content"] == "to bob@example.com"
