"""SSEDecoder: line endings, comments, multi-line data, event names, limits, and chunk-boundary independence."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstream.sse import DONE, SSEDecodeError, SSEDecoder, SSEEvent, encode_data


def decode(raw: bytes, **kwargs: int) -> list[SSEEvent]:
    return SSEDecoder(**kwargs).feed(raw)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_line_endings(eol: str) -> None:
    raw = f'data: {{"a": 1}}{eol}{eol}data: [DONE]{eol}{eol}'.encode()
    assert decode(raw) == [SSEEvent('{"a": 1}'), SSEEvent("[DONE]")]


def test_bare_cr_line_endings_mid_stream() -> None:
    raw = b"data: one\r\rdata: two\r\r: more to come\n"
    assert decode(raw) == [SSEEvent("one"), SSEEvent("two")]


def test_bare_cr_terminated_event_is_dispatched_without_waiting_for_more_bytes() -> None:
    # "\r\r" is two complete line endings: the event is finished. A stream using bare CR must get its
    # final event (here [DONE]) without the upstream sending anything more.
    assert decode(b"data: one\r\r") == [SSEEvent("one")]
    assert decode(b"data: one\r\rdata: [DONE]\r\r") == [SSEEvent("one"), SSEEvent("[DONE]")]


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []  # the \n completes the first CRLF: no blank line yet
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [SSEEvent("a\nb")]  # CRLF then CR: a blank line, the event is complete
    assert decoder.feed(b"\n") == []  # the LF of that CRLF, not another blank line
    assert decoder.feed(b"data: c\n\n") == [SSEEvent("c")]


def test_feeding_nothing_changes_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []  # must not forget that a \n may still complete this \r
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent("a\nb")]


def test_mixed_line_endings_in_one_stream() -> None:
    assert decode(b"data: a\r\ndata: b\n\r\ndata: c\r\n\n") == [SSEEvent("a\nb"), SSEEvent("c")]


def test_comments_are_ignored() -> None:
    raw = b": keep-alive\n\ndata: x\n: inside an event\ndata: y\n\n:\n\n"
    assert decode(raw) == [SSEEvent("x\ny")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: first\ndata: second\ndata: third\n\n") == [SSEEvent("first\nsecond\nthird")]


def test_only_one_leading_space_is_removed_and_colon_space_is_optional() -> None:
    assert decode(b"data:x\n\n") == [SSEEvent("x")]
    assert decode(b"data:  two spaces\n\n") == [SSEEvent(" two spaces")]
    assert decode(b"data: a: b\n\n") == [SSEEvent("a: b")]


def test_data_field_without_colon_is_an_empty_line_of_data() -> None:
    assert decode(b"data\n\n") == [SSEEvent("")]
    assert decode(b"data: a\ndata\ndata: b\n\n") == [SSEEvent("a\n\nb")]


def test_event_names() -> None:
    raw = b"event: message_start\ndata: {}\n\nevent: ping\ndata: {}\n\ndata: plain\n\n"
    assert decode(raw) == [
        SSEEvent("{}", "message_start"),
        SSEEvent("{}", "ping"),
        SSEEvent("plain", "message"),
    ]


def test_event_name_does_not_leak_into_the_next_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: delta\ndata: 1\n\n") == [SSEEvent("1", "delta")]
    assert decoder.feed(b"data: 2\n\n") == [SSEEvent("2", "message")]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"id: 7\nretry: 1000\nfoo: bar\ndata: x\n\n") == [SSEEvent("x")]


def test_done_is_an_ordinary_event() -> None:
    assert decode(DONE) == [SSEEvent("[DONE]")]


def test_blank_lines_without_an_event_dispatch_nothing() -> None:
    assert decode(b"\n\n\r\n\r\n") == []


def test_incomplete_event_waits_for_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("a\nb")]


def test_utf8_split_inside_a_character() -> None:
    raw = "data: héllo ✓ 😀\n\n".encode()
    decoder = SSEDecoder()
    events = [event for i in range(len(raw)) for event in decoder.feed(raw[i : i + 1])]
    assert events == [SSEEvent("héllo ✓ 😀")]


def test_invalid_utf8_raises() -> None:
    with pytest.raises(SSEDecodeError, match="invalid UTF-8"):
        decode(b"data: \xff\xfe\n\n")
    with pytest.raises(SSEDecodeError):
        decode(b"event: \xc3\n")


def test_sse_decode_error_is_a_value_error() -> None:
    assert issubclass(SSEDecodeError, ValueError)


def test_size_limit_on_one_unterminated_line() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed(b"data: " + b"x" * 90) == []
    with pytest.raises(SSEDecodeError, match="size limit"):
        decoder.feed(b"x" * 20)


def test_size_limit_on_many_data_lines_of_one_event() -> None:
    line = b"data: " + b"x" * 34 + b"\n"  # 40 bytes counted per line
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed(line * 2) == []
    with pytest.raises(SSEDecodeError, match="size limit"):
        decoder.feed(line)


def test_size_limit_is_per_event() -> None:
    event = b"data: " + b"x" * 54 + b"\n\n"  # 60 bytes: two of them exceed 100, each alone does not
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed(event) == [SSEEvent("x" * 54)]
    assert decoder.feed(event) == [SSEEvent("x" * 54)]
    assert decoder.feed(event * 5) == [SSEEvent("x" * 54)] * 5


def test_encode_data_round_trips() -> None:
    payload = {"id": "c1", "choices": [{"delta": {"content": "hé\nllo"}}]}
    raw = encode_data(payload) + DONE
    assert raw.startswith(b"data: {") and raw.endswith(b"\n\ndata: [DONE]\n\n")
    events = decode(raw)
    assert len(events) == 2
    assert json.loads(events[0].data) == payload
    assert events[1] == SSEEvent("[DONE]")


# ----------------------------------------------------------------------------- property: splitting never matters

_line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)
_event_name = _line_text.filter(lambda s: s != "" and not s.startswith(" "))
_event = st.tuples(
    st.one_of(st.none(), _event_name),
    st.lists(_line_text, min_size=1, max_size=4),  # data lines, in order
    st.lists(_line_text, max_size=2),  # comments, placed anywhere in the event
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A valid stream with random line endings, and the events it carries."""
    lines: list[str] = []
    expected: list[SSEEvent] = []
    for name, data, comments in draw(st.lists(_event, max_size=6)):
        block = [f"data: {d}" for d in data]
        extras = [f":{c}" for c in comments] + ([f"event: {name}"] if name is not None else [])
        for extra in extras:
            block.insert(draw(st.integers(0, len(block))), extra)
        lines += [*block, ""]
        expected.append(SSEEvent("\n".join(data), name or "message"))
    lines.append(": end")  # bytes after the last blank line, so a trailing bare CR is known to be complete
    out: list[str] = []
    previous = ""
    for line in lines:
        eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        if previous == "\r" and line == "" and eol == "\n":
            eol = "\r\n"  # "\r" then "\n" would read as one CRLF, not two line endings
        out.append(line + eol)
        previous = eol
    return "".join(out).encode(), expected


@settings(max_examples=300, deadline=None)
@given(streams())
def test_whole_stream_yields_the_events_written(stream: tuple[bytes, list[SSEEvent]]) -> None:
    raw, expected = stream
    assert SSEDecoder().feed(raw) == expected


@settings(max_examples=300, deadline=None)
@given(streams(), st.data())
def test_any_byte_splitting_yields_the_same_events_as_feeding_it_whole(
    stream: tuple[bytes, list[SSEEvent]], data: st.DataObject
) -> None:
    raw, expected = stream
    whole = SSEDecoder().feed(raw)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=16))) - {len(raw)})
    decoder = SSEDecoder()
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    split = [event for piece in pieces for event in decoder.feed(piece)]
    assert split == whole == expected


@settings(max_examples=100, deadline=None)
@given(streams())
def test_byte_at_a_time_yields_the_same_events(stream: tuple[bytes, list[SSEEvent]]) -> None:
    raw, expected = stream
    decoder = SSEDecoder()
    assert [event for i in range(len(raw)) for event in decoder.feed(raw[i : i + 1])] == expected
