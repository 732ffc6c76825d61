"""The spans of one request: server span, plugin steps, routing decision, upstream client calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.telemetry import genai
from gateway.telemetry.spans import FastSpan, FastTracer

if TYPE_CHECKING:
    from gateway.plugin import RequestContext
    from gateway.telemetry import Telemetry

log = logging.getLogger("gateway.telemetry")
PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent + tracestate
TRACE_HEADERS = ("traceparent", "tracestate")
_ACTIVE: ContextVar[trace.Tracer | None] = ContextVar("gateway_tracer", default=None)
_EMPTY = otel_context.Context()  # no traceparent: a new trace (extracting from nothing gives the same)


def trace_headers(span: Span) -> dict[str, str]:
    """W3C `traceparent` (and `tracestate`) naming `span`: what TraceContextTextMapPropagator.inject writes."""
    found = span.get_span_context()
    carrier = {"traceparent": f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}"}
    if found.trace_state:
        carrier["tracestate"] = found.trace_state.to_header()
    return carrier


def passthrough_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Tracing off: the client's trace context still travels upstream unchanged."""
    return {name: headers[name] for name in TRACE_HEADERS if name in headers}


class RequestTrace:
    __slots__ = ("capture", "client", "recording", "route_span", "span", "telemetry", "tracer")

    def __init__(self, telemetry: Telemetry, tracer: FastTracer, span: Span) -> None:
        self.telemetry = telemetry
        self.tracer = tracer
        self.span = span
        self.recording = span.is_recording()  # sampled: decided at the start, for the whole request
        self.capture = telemetry.config.capture_content and self.recording
        self.route_span: FastSpan | None = None
        self.client: FastSpan | None = None

    @classmethod
    def start(cls, telemetry: Telemetry, method: str, path: str, headers: Mapping[str, str]) -> RequestTrace:
        tracer = telemetry.tracer
        assert tracer is not None
        parent = PROPAGATOR.extract(headers) if "traceparent" in headers else _EMPTY
        span = tracer.start_trusted(
            f"{method} {path}",
            {"http.request.method": method, "url.path": path},
            trace.get_current_span(parent),
            SpanKind.SERVER,
        )
        # The request's task carries this context to its end (stream relay included) and dies with it.
        otel_context.attach(trace.set_span_in_context(span, parent))
        _ACTIVE.set(tracer)
        return cls(telemetry, tracer, span)

    def bind(self, ctx: RequestContext) -> None:
        ctx.put(self)
        if not self.recording:
            return
        found = self.span.get_span_context()
        ctx.trace_id, ctx.span_id = format(found.trace_id, "032x"), format(found.span_id, "016x")
        _fast(self.span).set_trusted(
            {
                "gen_ai.request.model": ctx.route.name,
                "gateway.request_id": ctx.request_id,
                "gateway.caller": ctx.caller.name,
                "gateway.stream": ctx.stream,
            }
        )

    def step(self, plugin: str, phase: str) -> AbstractContextManager[Span | None]:
        """A span for one plugin step (request or response phase), current while the step runs."""
        if not self.recording:
            return _UNTRACED
        return _Step(
            self.tracer.start_trusted(
                f"plugin {plugin}", {"gateway.plugin.name": plugin, "gateway.plugin.phase": phase}
            )
        )

    def start_route(self, model: str, strategy: str) -> None:
        if self.recording:
            self.route_span = _fast(
                self.tracer.start_trusted(
                    f"route {model}", {"gateway.route.model": model, "gateway.route.strategy": strategy}
                )
            )

    def end_route(self, backend: str | None, attempts: int, error: str | None = None) -> None:
        span, self.route_span = self.route_span, None
        if span is None:
            return
        span.set_attribute("gateway.route.attempts", attempts)
        if backend:
            span.set_attribute("gateway.backend", backend)
        if error:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def start_client(self, name: str, attributes: Mapping[str, Any], backend: str) -> dict[str, str]:
        """Open the CLIENT span of one upstream call (`attributes`: genai.request_attributes); the trace
        headers to send with it."""
        if not self.recording:  # not sampled: no span, but the trace (flagged unsampled) still goes upstream
            return trace_headers(self.span)
        span = self.client = _fast(
            self.tracer.start_trusted(
                name, {**attributes, "gateway.backend": backend}, self.route_span or self.span, SpanKind.CLIENT
            )
        )
        return trace_headers(span)

    def end_client(self, attributes: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        """Close the CLIENT span (`attributes`: genai.response_attributes)."""
        span, self.client = self.client, None
        if span is None:
            return
        if attributes:
            span.set_trusted(attributes)
        if error:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def first_chunk(self, ttft_s: float) -> None:
        if self.client is not None:
            self.client.set_attribute("gen_ai.response.time_to_first_chunk", ttft_s)
            self.client.add_event("gen_ai.first_chunk")

    async def capture_input(self, endpoint: str, body: Mapping[str, Any], redact: Callable[[str], str]) -> None:
        if self.capture and self.client is not None:
            await self._capture("gen_ai.input.messages", genai.input_messages, endpoint, body, redact)

    async def capture_output(self, texts: list[tuple[str, str | None]], redact: Callable[[str], str]) -> None:
        if self.capture and self.client is not None:
            await self._capture("gen_ai.output.messages", genai.output_messages, texts, redact)

    async def _capture(self, name: str, render: Callable[..., str], *args: Any) -> None:
        try:
            text = await asyncio.to_thread(render, *args)  # redaction is CPU-heavy
        except Exception:
            log.warning("content capture failed; %s not recorded", name, exc_info=True)
            text = "[not recorded: redaction failed]"
        if self.client is not None:
            self.client.set_attribute(name, text)

    def finish(self, status: int, attributes: Mapping[str, Any] | None = None) -> None:
        """End the server span (`attributes`: the gateway's own, already valid values)."""
        if self.client is not None:  # a stream the client abandoned: the call ended with the request
            self.end_client(error="cancelled" if status == 499 else None)
        if self.route_span is not None:
            self.end_route(None, 0, "cancelled")
        span = self.span
        if not span.is_recording():
            return
        span = _fast(span)
        span.set_trusted({"http.response.status_code": status, **(attributes or {})})
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def _fast(span: Span) -> FastSpan:
    """A span of a recorded request (a sampled trace's children are sampled: always the gateway's own)."""
    assert isinstance(span, FastSpan)
    return span


class _Step:
    """`RequestTrace.step`'s context manager: a plain class costs less than a generator-based one."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: object = None

    def __enter__(self) -> Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        span = self.span
        if kind is not None:
            span.set_attribute("error.type", kind.__name__)
            span.set_status(Status(StatusCode.ERROR))
        otel_context.detach(self.token)  # type: ignore[arg-type]
        span.end()


_UNTRACED: AbstractContextManager[None] = contextlib.nullcontext()


class _RoutingTracer(trace.Tracer):
    """The global API's tracer: delegates to the tracer of the policy serving this request."""

    def start_span(self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any) -> Span:
        tracer = _ACTIVE.get()
        if tracer is None:
            return NonRecordingSpan(trace.get_current_span(context).get_span_context())
        return tracer.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        *args: Any,
        end_on_exit: bool = True,
        **kwargs: Any,
    ) -> Iterator[Span]:
        span = self.start_span(name, context, *args, **kwargs)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


class _RoutingProvider(trace.TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _RoutingTracer()


def install_routing_provider() -> None:
    """Make `opentelemetry.trace.get_tracer()` in plugins reach the gateway's tracer (once per process)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(_RoutingProvider())
