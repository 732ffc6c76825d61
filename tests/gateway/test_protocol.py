"""protocol.check: the first offending field is named in `param` and the message; unknown fields pass."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.protocol import ChatCompletionRequest, _chat_is_valid, check

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **fields}


def rejected(endpoint: str, body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check(endpoint, body)
    err = info.value
    assert err.status == 400
    assert err.type == "invalid_request_error"
    if err.param is not None:
        assert err.message.startswith(f"{err.param}: ")
    return err


@pytest.mark.parametrize("body", [[], "text", None, 5, [{"model": "m"}]])
def test_body_must_be_an_object(body: Any) -> None:
    err = rejected("chat", body)
    assert err.param is None
    assert err.message == "the request body must be a JSON object"


@pytest.mark.parametrize(
    ("endpoint", "body", "param", "message"),
    [
        ("chat", {"messages": USER}, "model", "model: this field is required"),
        ("chat", {"model": "m"}, "messages", "messages: this field is required"),
        ("completions", {"model": "m"}, "prompt", "prompt: this field is required"),
        ("embeddings", {"model": "m"}, "input", "input: this field is required"),
        ("chat", {"model": "", "messages": USER}, "model", "model: String should have at least 1 character"),
        (
            "chat",
            {"model": "m", "messages": []},
            "messages",
            "messages: List should have at least 1 item after validation, not 0",
        ),
        ("chat", {"model": "m", "messages": [{"role": "user"}]}, "messages", "messages: a user message needs content"),
        (
            "chat",
            {"model": "m", "messages": [*USER, {"role": "tool", "tool_call_id": "1"}]},
            "messages",
            "messages: a tool message needs content",
        ),
        ("embeddings", {"model": "m", "input": ""}, "input", "input: input must not be empty"),
        ("embeddings", {"model": "m", "input": []}, "input", "input: input must not be empty"),
    ],
)
def test_exact_messages(endpoint: str, body: dict[str, Any], param: str, message: str) -> None:
    err = rejected(endpoint, body)
    assert err.param == param
    assert err.message == message


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat", {"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ("chat", {"model": "m", "messages": [*USER, {"role": "user", "content": 5}]}, "messages[1].content"),
        (
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            "messages[0].content",
        ),
        (
            "chat",
            {
                "model": "m",
                "messages": [
                    *USER,
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {"name": "f"}}]},
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ("chat", chat(temperature=2.5), "temperature"),
        ("chat", chat(temperature=-0.1), "temperature"),
        ("chat", chat(top_p=1.5), "top_p"),
        ("chat", chat(n=0), "n"),
        ("chat", chat(n=129), "n"),
        ("chat", chat(max_tokens=0), "max_tokens"),
        ("chat", chat(max_completion_tokens=0), "max_completion_tokens"),
        ("chat", chat(stop=5), "stop"),
        ("chat", chat(tools=[{"type": "function", "function": {"name": "x" * 65}}]), "tools[0].function.name"),
        ("chat", chat(tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools[0].type"),
        ("chat", chat(response_format={"type": "xml"}), "response_format.type"),
        ("chat", chat(user=5), "user"),
        ("completions", {"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("completions", {"model": "m", "prompt": 5}, "prompt"),
        ("embeddings", {"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("embeddings", {"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_param_names_the_offending_field(endpoint: str, body: dict[str, Any], param: str) -> None:
    assert rejected(endpoint, body).param == param


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat", chat(stream="maybe"), "stream"),
        ("completions", {"model": "m", "prompt": "x", "stream": "maybe"}, "stream"),
        ("chat", chat(stream=True, stream_options={"include_usage": "maybe"}), "stream_options.include_usage"),
        ("chat", chat(stream=True, stream_options="yes"), "stream_options"),
    ],
)
def test_param_names_stream_fields(endpoint: str, body: dict[str, Any], param: str) -> None:
    # Field names that merely start with "str" must not be mistaken for pydantic's union tags ("str").
    err = rejected(endpoint, body)
    assert err.param == param
    assert err.message.startswith(f"{param}: ")


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat", chat(logit_bias={"50256": -100}, seed=1, foo={"bar": [1, 2]}, metadata={"a": "b"})),
        ("chat", {"model": "m", "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "x"}}]}),
        (
            "chat",
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,"}, "detail": "low"}],
                    }
                ],
            },
        ),
        ("chat", chat(tools=[{"type": "function", "function": {"name": "f", "strict": True}, "extra": 1}])),
        ("chat", chat(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})),
        ("completions", {"model": "m", "prompt": [[1, 2], [3]], "echo": True, "best_of": 2}),
        ("embeddings", {"model": "m", "input": [1, 2, 3], "user": "u", "truncate": "END"}),
    ],
)
def test_unknown_fields_are_allowed_and_the_body_is_not_changed(endpoint: str, body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    assert check(endpoint, body) is None
    assert body == before


def test_integers_are_accepted_for_float_fields() -> None:
    check("chat", chat(temperature=1, top_p=1))
    check("completions", {"model": "m", "prompt": "x", "temperature": 0})


def test_assistant_message_may_have_no_content() -> None:
    check("chat", {"model": "m", "messages": [*USER, {"role": "assistant", "content": None}]})


# The msgspec mirror (`_Chat`) is a fast path: it may send a valid body on to pydantic, but it must never
# accept a body that pydantic rejects.
def _pydantic_accepts(body: Any) -> bool:
    try:
        ChatCompletionRequest.model_validate(body, strict=True)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "body",
    [
        chat(),
        chat(stream=True, stream_options={"include_usage": True}, temperature=0.7, top_p=1, n=2, max_tokens=5),
        chat(stop=["a", "b"], user="u", response_format={"type": "json_object"}, seed=3),
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        chat(tool_choice={"type": "function", "function": {"name": "f"}}),
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "1", "content": "42"},
            ],
        },
    ],
)
def test_valid_chat_bodies_take_the_fast_path(body: dict[str, Any]) -> None:
    assert _chat_is_valid(body)
    assert _pydantic_accepts(body)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
_DELETE = object()
# Values at and around every bound and type the models check.
_EDGES = [
    *(_DELETE, None, True, False, 0, 1, -1, 2, 2.0, 2.5, 0.5, -0.1, 128, 129, 2**63, 2**64),
    *("", "x", "user", "f" * 64, "f" * 65, "function", "json_object", "xml"),
    *([], {}, [1], ["a"], [{"type": "text"}], [{"type": ""}], {"type": "text"}, {"name": "f"}),
]
_odd = st.one_of(st.sampled_from(_EDGES), _json)  # ...or anything at all


def _base() -> dict[str, Any]:
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "s"}]},
            {"role": "user", "content": "hi", "name": "n"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_call_id": "1"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "temperature": 1.0,
        "top_p": 0.5,
        "max_tokens": 5,
        "max_completion_tokens": 5,
        "stop": ["x"],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_schema"},
        "user": "u",
    }


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a body: each key of each object and each item of each list."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


_PATHS = _paths(_base())


def _change(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    parent: Any = body
    try:
        for part in path[:-1]:
            parent = parent[part]
        if value is _DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass  # an earlier change removed or replaced this place


@st.composite
def _chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid chat body with two or three places changed to an odd value (or removed)."""
    body = _base()
    for _ in range(draw(st.integers(2, 3))):
        _change(body, draw(st.sampled_from(_PATHS)), draw(_odd))
    return body


def test_the_unchanged_body_takes_the_fast_path() -> None:
    assert _chat_is_valid(_base())
    assert _pydantic_accepts(_base())


def test_one_change_anywhere_is_judged_as_pydantic_judges_it() -> None:
    """Every place in the body set to every edge value, one at a time: the two never disagree here."""
    judged = 0
    for path in _PATHS:
        for value in _EDGES:
            body = _base()
            _change(body, path, value)
            assert _chat_is_valid(body) == _pydantic_accepts(body), (path, value)
            judged += 1
    assert judged > 1000


@settings(max_examples=1500, deadline=None)
@given(_chat_bodies())
def test_the_fast_path_never_accepts_what_pydantic_rejects(body: dict[str, Any]) -> None:
    fast = _chat_is_valid(body)
    event(f"fast path accepts: {fast}")  # --hypothesis-show-statistics: a few percent do
    if fast:
        assert _pydantic_accepts(body), body
