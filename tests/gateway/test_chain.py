"""Chain: phase order, early answers, Emit/Respond in streams, skipping phases a plugin does not override."""

from __future__ import annotations

from typing import Any

from gateway.chain import Chain
from gateway.plugin import (
    CONTINUE,
    Caller,
    Emit,
    Plugin,
    PluginConfig,
    RequestContext,
    RequestDecision,
    Respond,
    StreamDecision,
)
from gateway.policy import ModelRoute, Target

Log = list[tuple[Any, ...]]


def make_ctx() -> RequestContext:
    route = ModelRoute(name="m", targets=[Target(backend="b", model="x")])
    return RequestContext(
        request_id="req-1",
        endpoint="chat",
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={},
        caller=Caller("tester", True),
        route=route,
        stream=True,
    )


def chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def text_of(item: dict[str, Any]) -> str:
    content: str = item["choices"][0]["delta"]["content"]
    return content


class Spy(Plugin):
    """Overrides every phase: records each call, answers with the decision given for that phase."""

    def __init__(self, tag: str, log: Log, **decisions: Any) -> None:
        super().__init__(PluginConfig())
        self.tag = tag
        self.log = log
        self.decisions = decisions

    def _decide(self, phase: str, *args: Any) -> Any:
        decision = self.decisions.get(phase, CONTINUE)
        return decision(*args) if callable(decision) else decision

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        self.log.append((self.tag, "request"))
        return self._decide("request", ctx)  # type: ignore[no-any-return]

    async def on_response(self, ctx: RequestContext, completion: dict[str, Any]) -> RequestDecision:
        self.log.append((self.tag, "response"))
        return self._decide("response", completion)  # type: ignore[no-any-return]

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        self.log.append((self.tag, "chunk", text_of(chunk)))
        return self._decide("chunk", chunk)  # type: ignore[no-any-return]

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        self.log.append((self.tag, "end_stream"))
        return self._decide("end_stream")  # type: ignore[no-any-return]

    async def on_end(self, ctx: RequestContext) -> None:
        self.log.append((self.tag, "end"))


class Buffering(Spy):
    """Holds back every chunk it sees and releases them all when the stream ends."""

    def __init__(self, tag: str, log: Log) -> None:
        super().__init__(tag, log)
        self.held: list[dict[str, Any]] = []

    async def on_stream_chunk(self, ctx: RequestContext, chunk: dict[str, Any]) -> StreamDecision:
        self.log.append((self.tag, "chunk", text_of(chunk)))
        self.held.append(chunk)
        return Emit(())

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        self.log.append((self.tag, "end_stream"))
        return Emit(tuple(self.held))


class Inert(Plugin):
    """Overrides nothing."""

    def __init__(self) -> None:
        super().__init__(PluginConfig())


class RequestOnly(Plugin):
    def __init__(self, log: Log) -> None:
        super().__init__(PluginConfig())
        self.log = log

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        self.log.append(("request-only", "request"))
        return CONTINUE


class StreamEndOnly(Plugin):
    def __init__(self, log: Log, tail: dict[str, Any]) -> None:
        super().__init__(PluginConfig())
        self.log = log
        self.tail = tail

    async def on_stream_end(self, ctx: RequestContext) -> StreamDecision:
        self.log.append(("end-only", "end_stream"))
        return Emit((self.tail,))


def spies(log: Log, *tags: str, **decisions: dict[str, Any]) -> list[Plugin]:
    return [Spy(tag, log, **decisions.get(tag, {})) for tag in tags]


# ----------------------------------------------------------------------------- order


async def test_request_phase_runs_in_policy_order() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", "C"))
    assert await chain.request(make_ctx()) == (None, 3)
    assert log == [("A", "request"), ("B", "request"), ("C", "request")]


async def test_response_phase_runs_in_reverse_order() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", "C"))
    assert await chain.response(make_ctx(), {"choices": []}, 3) is None
    assert log == [("C", "response"), ("B", "response"), ("A", "response")]


async def test_stream_chunk_phase_runs_in_reverse_order() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", "C"))
    item = chunk("x")
    assert await chain.chunk(make_ctx(), item, 3) == [item]
    assert log == [("C", "chunk", "x"), ("B", "chunk", "x"), ("A", "chunk", "x")]


async def test_stream_end_phase_runs_in_reverse_order_and_end_in_policy_order() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", "C"))
    ctx = make_ctx()
    assert await chain.stream_end(ctx, 3) == []
    await chain.end(ctx)
    assert log == [
        ("C", "end_stream"),
        ("B", "end_stream"),
        ("A", "end_stream"),
        ("A", "end"),
        ("B", "end"),
        ("C", "end"),
    ]


async def test_response_phase_sees_changes_made_by_later_plugins() -> None:
    log: Log = []

    def stamp(tag: str) -> Any:
        def decide(completion: dict[str, Any]) -> Any:
            completion.setdefault("seen", []).append(tag)
            return CONTINUE

        return decide

    chain = Chain(spies(log, "A", "B", A={"response": stamp("A")}, B={"response": stamp("B")}))
    completion: dict[str, Any] = {}
    assert await chain.response(make_ctx(), completion, 2) is None
    assert completion == {"seen": ["B", "A"]}


# ----------------------------------------------------------------------------- early answers


async def test_respond_in_request_phase_short_circuits_and_returns_its_index() -> None:
    log: Log = []
    answer = Respond({"choices": []}, status=200, headers={"x-cache": "hit"})
    chain = Chain(spies(log, "A", "B", "C", B={"request": answer}))
    early, upto = await chain.request(make_ctx())
    assert early is answer
    assert upto == 1
    assert log == [("A", "request"), ("B", "request")]


async def test_index_counts_plugins_that_do_not_override_on_request() -> None:
    log: Log = []
    answer = Respond({"blocked": True}, status=403)
    chain = Chain([Inert(), Inert(), *spies(log, "C", C={"request": answer})])
    assert await chain.request(make_ctx()) == (answer, 2)


async def test_response_after_an_early_answer_only_runs_plugins_before_it() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", "C", "D", C={"request": Respond({"cached": True})}))
    ctx = make_ctx()
    early, upto = await chain.request(ctx)
    assert early is not None and upto == 2
    log.clear()
    assert await chain.response(ctx, early.body, upto) is None
    assert log == [("B", "response"), ("A", "response")]


async def test_early_answer_from_the_first_plugin_runs_no_response_phase() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", A={"request": Respond({})}))
    _, upto = await chain.request(make_ctx())
    assert upto == 0
    log.clear()
    assert await chain.response(make_ctx(), {}, upto) is None
    assert await chain.chunk(make_ctx(), chunk("x"), upto) == [chunk("x")]
    assert await chain.stream_end(make_ctx(), upto) == []
    assert log == []


async def test_respond_in_response_phase_stops_the_remaining_plugins() -> None:
    log: Log = []
    replaced = Respond({"replaced": True})
    chain = Chain(spies(log, "A", "B", "C", B={"response": replaced}))
    assert await chain.response(make_ctx(), {}, 3) is replaced
    assert log == [("C", "response"), ("B", "response")]


# ----------------------------------------------------------------------------- skipping


async def test_plugin_that_overrides_nothing_is_never_called() -> None:
    inert = Inert()
    calls: Log = []

    def spy(phase: str) -> Any:
        async def record(*args: Any) -> Any:
            calls.append((phase,))
            return CONTINUE

        return record

    # Instance attributes: the chain would find these if it called the phases at all.
    for phase in ("on_request", "on_response", "on_stream_chunk", "on_stream_end", "on_end"):
        setattr(inert, phase, spy(phase))
    chain = Chain([inert])
    ctx = make_ctx()
    assert chain.inspects_stream is False
    assert await chain.request(ctx) == (None, 1)
    assert await chain.response(ctx, {}, 1) is None
    assert await chain.chunk(ctx, chunk("x"), 1) == [chunk("x")]
    assert await chain.stream_end(ctx, 1) == []
    await chain.end(ctx)
    assert calls == []


async def test_plugin_is_only_called_in_the_phases_it_overrides() -> None:
    log: Log = []
    only = RequestOnly(log)
    others: Log = []

    async def record(*args: Any) -> Any:
        others.append(args)
        return CONTINUE

    for phase in ("on_response", "on_stream_chunk", "on_stream_end", "on_end"):
        setattr(only, phase, record)
    chain = Chain([only])
    ctx = make_ctx()
    await chain.request(ctx)
    await chain.response(ctx, {}, 1)
    await chain.chunk(ctx, chunk("x"), 1)
    await chain.stream_end(ctx, 1)
    await chain.end(ctx)
    assert log == [("request-only", "request")]
    assert others == []
    assert chain.inspects_stream is False


def test_inspects_stream_when_a_plugin_overrides_a_stream_phase() -> None:
    assert Chain([]).inspects_stream is False
    assert Chain([Inert(), RequestOnly([])]).inspects_stream is False
    assert Chain([Inert(), StreamEndOnly([], chunk("t"))]).inspects_stream is True
    assert Chain(spies([], "A")).inspects_stream is True


# ----------------------------------------------------------------------------- stream decisions


async def test_emit_several_chunks_expands_for_the_plugins_after() -> None:
    log: Log = []
    a, b = chunk("a"), chunk("b")
    chain = Chain(spies(log, "A", "B", "C", C={"chunk": Emit((a, b))}))
    out = await chain.chunk(make_ctx(), chunk("x"), 3)
    assert out == [a, b]
    assert out[0] is a and out[1] is b
    assert log == [
        ("C", "chunk", "x"),
        ("B", "chunk", "a"),
        ("B", "chunk", "b"),
        ("A", "chunk", "a"),
        ("A", "chunk", "b"),
    ]


async def test_emit_replacement_is_what_earlier_plugins_see() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", B={"chunk": lambda c: Emit((chunk(text_of(c).upper()),))}))
    assert await chain.chunk(make_ctx(), chunk("x"), 2) == [chunk("X")]
    assert log == [("B", "chunk", "x"), ("A", "chunk", "X")]


async def test_emit_nothing_holds_the_chunk_back() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", "C", B={"chunk": Emit(())}))
    assert await chain.chunk(make_ctx(), chunk("x"), 3) == []
    assert log == [("C", "chunk", "x"), ("B", "chunk", "x")]


async def test_respond_in_stream_chunk_ends_the_stream() -> None:
    log: Log = []
    stop = Respond({"error": {"message": "blocked"}}, status=400)
    chain = Chain(spies(log, "A", "B", "C", B={"chunk": stop}))
    assert await chain.chunk(make_ctx(), chunk("x"), 3) is stop
    assert log == [("C", "chunk", "x"), ("B", "chunk", "x")]


async def test_respond_on_the_second_of_emitted_chunks() -> None:
    log: Log = []
    stop = Respond({"done": True})
    chain = Chain(
        spies(
            log,
            "A",
            "B",
            A={"chunk": lambda c: stop if text_of(c) == "b" else CONTINUE},
            B={"chunk": Emit((chunk("a"), chunk("b"), chunk("c")))},
        )
    )
    assert await chain.chunk(make_ctx(), chunk("x"), 2) is stop
    assert log == [("B", "chunk", "x"), ("A", "chunk", "a"), ("A", "chunk", "b")]


async def test_stream_chunk_skips_plugins_at_or_after_upto() -> None:
    log: Log = []
    chain = Chain(spies(log, "A", "B", "C"))
    assert await chain.chunk(make_ctx(), chunk("x"), 2) == [chunk("x")]
    assert log == [("B", "chunk", "x"), ("A", "chunk", "x")]


# ----------------------------------------------------------------------------- stream end / flush


async def test_flush_of_a_later_plugin_passes_through_earlier_plugins_in_order() -> None:
    log: Log = []
    p0 = Spy("P0", log)
    p1 = Buffering("P1", log)
    p2 = Spy("P2", log, end_stream=Emit((chunk("tail2"),)))
    chain = Chain([p0, p1, p2])
    ctx = make_ctx()

    assert await chain.chunk(ctx, chunk("x"), 3) == []
    out = await chain.stream_end(ctx, 3)

    assert [text_of(c) for c in out] == ["x", "tail2"]
    assert log == [
        ("P2", "chunk", "x"),
        ("P1", "chunk", "x"),  # held back: P0 sees nothing yet
        ("P2", "end_stream"),  # P2 flushes tail2 ...
        ("P1", "chunk", "tail2"),  # ... which P1 sees (and holds) before its own end
        ("P1", "end_stream"),  # P1 releases x and tail2 ...
        ("P0", "chunk", "x"),  # ... which P0 sees, in order, before its own end
        ("P0", "chunk", "tail2"),
        ("P0", "end_stream"),
    ]


async def test_flush_from_a_plugin_without_on_stream_chunk_reaches_earlier_plugins() -> None:
    log: Log = []
    chain = Chain([Spy("P0", log), StreamEndOnly(log, chunk("tail"))])
    out = await chain.stream_end(make_ctx(), 2)
    assert [text_of(c) for c in out] == ["tail"]
    assert log == [("end-only", "end_stream"), ("P0", "chunk", "tail"), ("P0", "end_stream")]


async def test_flushed_chunks_can_be_expanded_by_earlier_plugins() -> None:
    log: Log = []
    p0 = Spy("P0", log, chunk=lambda c: Emit((c, chunk(text_of(c) + "!"))))
    chain = Chain([p0, StreamEndOnly(log, chunk("t"))])
    out = await chain.stream_end(make_ctx(), 2)
    assert [text_of(c) for c in out] == ["t", "t!"]


async def test_stream_end_respond_from_on_stream_end() -> None:
    log: Log = []
    stop = Respond({"final": True})
    chain = Chain(spies(log, "A", "B", B={"end_stream": stop}))
    assert await chain.stream_end(make_ctx(), 2) is stop
    assert log == [("B", "end_stream")]


async def test_stream_end_respond_from_a_flushed_chunk() -> None:
    log: Log = []
    stop = Respond({"blocked": True}, status=400)
    chain = Chain([Spy("P0", log, chunk=stop), StreamEndOnly(log, chunk("t"))])
    assert await chain.stream_end(make_ctx(), 2) is stop
    assert log == [("end-only", "end_stream"), ("P0", "chunk", "t")]


async def test_stream_end_skips_plugins_at_or_after_upto() -> None:
    log: Log = []
    chain = Chain([Spy("P0", log), StreamEndOnly(log, chunk("never"))])
    assert await chain.stream_end(make_ctx(), 1) == []
    assert log == [("P0", "end_stream")]


# ----------------------------------------------------------------------------- RequestContext state


class Budget:
    def __init__(self, tokens: int) -> None:
        self.tokens = tokens


class SubBudget(Budget):
    pass


def test_request_context_typed_state() -> None:
    ctx = make_ctx()
    assert ctx.get(Budget) is None
    first = Budget(10)
    ctx.put(first)
    assert ctx.get(Budget) is first
    second = Budget(20)
    ctx.put(second)  # one value per class: the newer replaces the older
    assert ctx.get(Budget) is second
    assert ctx.state == {Budget: second}
    assert ctx.get(SubBudget) is None
    sub = SubBudget(5)
    ctx.put(sub)  # keyed by its own class, not its base
    assert ctx.get(SubBudget) is sub
    assert ctx.get(Budget) is second


def test_request_context_get_checks_the_stored_type() -> None:
    ctx = make_ctx()
    ctx.state[Budget] = "not a budget"
    assert ctx.get(Budget) is None


def test_request_context_states_are_independent() -> None:
    one, two = make_ctx(), make_ctx()
    one.put(Budget(1))
    assert two.get(Budget) is None


class Prefetcher(Plugin):
    """Records when its prefetch runs; fails it when told to."""

    def __init__(self, tag: str, log: Log, fail: bool = False) -> None:
        super().__init__(PluginConfig())
        self.tag = tag
        self.log = log
        self.fail = fail

    def prefetch(self, ctx: RequestContext) -> None:
        self.log.append((self.tag, "prefetch"))
        if self.fail:
            raise RuntimeError("prefetch broke")

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        self.log.append((self.tag, "request"))
        return CONTINUE


async def test_prefetch_runs_before_the_plugins_ahead_of_it() -> None:
    log: Log = []
    chain = Chain([Spy("a", log), Prefetcher("b", log)])
    assert await chain.request(make_ctx()) == (None, 2)
    assert log == [("b", "prefetch"), ("a", "request"), ("b", "request")]


async def test_a_first_plugin_is_not_prefetched_it_would_overlap_nothing() -> None:
    log: Log = []
    await Chain([Prefetcher("a", log), Spy("b", log)]).request(make_ctx())
    assert log == [("a", "request"), ("b", "request")]


async def test_a_failing_prefetch_does_not_fail_the_request() -> None:
    log: Log = []
    assert await Chain([Spy("a", log), Prefetcher("b", log, fail=True)]).request(make_ctx()) == (None, 2)
    assert log == [("b", "prefetch"), ("a", "request"), ("b", "request")]
