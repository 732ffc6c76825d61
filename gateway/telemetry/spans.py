"""Spans that cost a few microseconds: the OpenTelemetry API's `Span`, recorded as one plain tuple.

The SDK's `Span` builds bounded attribute maps with locks, event and link lists and a resource
reference for every span, and hands a `ReadableSpan` to its processors: about 25-40 us per span on
this path, and a sampled gateway request makes seven. Here a span is a slotted object whose `end()`
appends one tuple (`Record`) to the export queue. The exporter side (`otlp.SpanExport`, off the request
path) writes records as OTLP/protobuf, or turns them back into the SDK's `ReadableSpan`s for its gRPC exporter.

Sampling is the SDK's default, `ParentBased(TraceIdRatioBased(ratio))`, done inline: a parent's
sampled flag decides; a new trace is sampled when the low 64 bits of its id fall under the ratio's
bound. Limits follow the SDK's defaults (128 attributes, events and links per span).
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes, AttributeValue

log = logging.getLogger("gateway.telemetry")

LIMIT = 128  # attributes per span, events, links, attributes per event or link (the SDK's defaults)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_PLAIN = (str, bool, int, float)
_OK = StatusCode.OK.value
_NO_STATUS: tuple[int, str | None] = (StatusCode.UNSET.value, None)

# One finished span, plain data only (it crosses a process boundary by pickle):
# (name, trace_id, span_id, trace_state header or "", parent (span_id, is_remote) or None, kind value,
#  start ns, end ns, attributes, events [(name, attributes, ns)], links [(trace_id, span_id, flags, is_remote,
#  trace_state, attributes)], (status code value, description or None))
Record = tuple[Any, ...]


def clean(value: object) -> AttributeValue | None:
    """An attribute value as OpenTelemetry allows it (a primitive or a homogeneous sequence), else None."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        kinds = {type(item) for item in value if item is not None}
        if len(kinds) <= 1 and kinds <= {str, bool, int, float}:
            return tuple(value)
    return None


def _put(into: dict[str, AttributeValue], key: str, value: object) -> None:
    cleaned = clean(value)
    if cleaned is None or not key:
        log.warning("span attribute %r dropped: invalid key or value type %s", key, type(value).__name__)
        return
    if key not in into and len(into) >= LIMIT:
        del into[next(iter(into))]  # like the SDK's BoundedAttributes: the oldest goes
    into[key] = cleaned


def _attributes(given: Attributes) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    if given:
        for key, value in given.items():
            _put(out, key, value)
    return out


class FastSpan(trace.Span):
    """A recording span; `end()` hands its `Record` to the tracer's sink once."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_ids",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_sink",
        "_start",
        "_status",
    )

    def __init__(
        self,
        name: str,
        ids: tuple[int, int, TraceState | None],
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        links: list[tuple[Any, ...]] | None,
        start: int,
        sink: Callable[[Record], None],
    ) -> None:
        self._name = name
        self._ids = ids  # (trace_id, span_id, trace state): the SpanContext is made only if someone asks
        self._context: SpanContext | None = None
        self._parent = parent
        self._kind = kind.value  # what the record carries (an enum's .value is a descriptor call)
        self._attributes = attributes
        self._events: list[tuple[str, dict[str, AttributeValue], int]] | None = None
        self._links = links
        self._start = start
        self._end = 0
        self._status = _NO_STATUS
        self._sink = sink

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            trace_id, span_id, state = self._ids
            context = self._context = SpanContext(trace_id, span_id, False, _SAMPLED, state)
        return context

    def is_recording(self) -> bool:
        return self._end == 0

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end == 0:
            _put(self._attributes, key, value)

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end == 0:
            for key, value in attributes.items():
                _put(self._attributes, key, value)

    def set_trusted(self, attributes: Mapping[str, Any]) -> None:
        """`set_attributes` for the gateway's own attributes, already valid (primitives or lists of one kind):
        no per-value check. Anything from outside (plugins, the API) goes through `set_attributes`."""
        if self._end != 0:
            return
        into = self._attributes
        if len(into) + len(attributes) <= LIMIT:
            into.update(attributes)
        else:
            for key, value in attributes.items():
                _put(into, key, value)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end != 0:
            return
        events = self._events
        if events is None:
            events = self._events = []
        elif len(events) >= LIMIT:
            del events[0]
        events.append((name, _attributes(attributes), timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end != 0 or not context.is_valid:
            return
        links = self._links
        if links is None:
            links = self._links = []
        if len(links) < LIMIT:
            links.append(_link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end == 0:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end != 0 or self._status[0] == _OK:  # OK is final, as in the SDK
            return
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        if code is StatusCode.UNSET:
            return
        self._status = (code.value, description if code is StatusCode.ERROR else None)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        found: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            found.update(attributes)
        self.add_event("exception", found, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end != 0:
            log.warning("span %r ended twice; the second end is ignored", self._name)
            return
        self._end = end_time or time.time_ns()
        trace_id, span_id, state = self._ids
        parent = self._parent
        self._sink(
            (
                self._name,
                trace_id,
                span_id,
                state.to_header() if state else "",
                None if parent is None else (parent.span_id, parent.is_remote),
                self._kind,
                self._start,
                self._end,
                self._attributes,
                self._events,
                self._links,
                self._status,
            )
        )

    def __repr__(self) -> str:
        trace_id, span_id, _ = self._ids
        return f"FastSpan({self._name!r}, trace_id={trace_id:032x}, span_id={span_id:016x})"


def _link(context: SpanContext, attributes: Attributes) -> tuple[Any, ...]:
    state = context.trace_state
    return (
        context.trace_id,
        context.span_id,
        int(context.trace_flags),
        context.is_remote,
        state.to_header() if state else "",
        _attributes(attributes),
    )


class FastTracer(trace.Tracer):
    """Starts `FastSpan`s for sampled traces and `NonRecordingSpan`s (still propagated) for the rest."""

    def __init__(self, ratio: float, sink: Callable[[Record], None]) -> None:
        self._bound = round(ratio * (1 << 64))  # TraceIdRatioBased: sampled when trace_id's low 64 bits < bound
        self._sink = sink

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        return self._open(name, parent, kind, _attributes(attributes), links, start_time)

    def start_trusted(
        self,
        name: str,
        attributes: dict[str, Any],
        parent: trace.Span | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> trace.Span:
        """A child of `parent` (None: the current span) for the gateway's own spans: `attributes` are already
        valid values (as for `FastSpan.set_trusted`) and the span takes the dict over."""
        found = (trace.get_current_span() if parent is None else parent).get_span_context()
        return self._open(name, found, kind, attributes, None, None)

    def _open(
        self,
        name: str,
        found: SpanContext,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        links: Sequence[Link] | None,
        start_time: int | None,
    ) -> trace.Span:
        span_id = random.getrandbits(64)
        while span_id == INVALID_SPAN_ID:
            span_id = random.getrandbits(64)
        parent: SpanContext | None = None
        if found.is_valid:
            parent, trace_id, sampled, state = found, found.trace_id, found.trace_flags.sampled, found.trace_state
        else:
            trace_id = random.getrandbits(128)
            while trace_id == INVALID_TRACE_ID:
                trace_id = random.getrandbits(128)
            sampled, state = (trace_id & 0xFFFFFFFFFFFFFFFF) < self._bound, None
        if not sampled:
            return NonRecordingSpan(SpanContext(trace_id, span_id, False, _UNSAMPLED, state))
        linked = None
        if links:  # built for sampled spans only
            linked = [_link(link.context, link.attributes) for link in links if link.context.is_valid][:LIMIT] or None
        return FastSpan(
            name,
            (trace_id, span_id, state),
            parent,
            kind,
            attributes,
            linked,
            start_time or time.time_ns(),
            self._sink,
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current
