"""Property-based tests (Hypothesis) of what turns bytes into a request and YAML into a policy: the
request models behind `intake.parse`, and the policy loader. Whatever comes in, the only failure is the
gateway's own 400 (or PolicyError), naming a real field, and valid input passes unchanged."""

from __future__ import annotations

import copy
import re
from typing import Any

import msgspec
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import intake
from gateway.errors import InvalidRequest
from gateway.loader import PolicyError, load_text
from gateway.policy import Limits, Policy

LIMITS = Limits(max_messages=64)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- values -------------------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])
_text = st.text(max_size=40)
_part = st.fixed_dictionaries({"type": st.just("text"), "text": _text})
_valid_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "tool"]), "content": _text | st.lists(_part, max_size=3)}
) | st.fixed_dictionaries({"role": st.just("assistant")}, optional={"content": _text | st.none()})
_valid_chat = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=30), "messages": st.lists(_valid_message, min_size=1, max_size=5)},
    optional={
        "stream": st.booleans(),
        "n": st.integers(1, 128),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 10**6),
        "stop": _text | st.lists(_text, max_size=4),
        "user": _text,
        "seed": st.integers(),  # unknown to the models: passed through
        "metadata": _junk,
    },
)
_valid_completion = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=30),
        "prompt": _text | st.lists(_text, max_size=3) | st.lists(st.integers(0, 10**6), max_size=5),
    },
    optional={"max_tokens": st.integers(0, 10**6), "stream": st.booleans()},
)
_valid_embedding = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=30), "input": st.text(min_size=1) | st.lists(_text, min_size=1, max_size=3)},
    optional={"encoding_format": st.sampled_from(["float", "base64"]), "dimensions": st.integers(1, 4096)},
)
VALID = {"chat": _valid_chat, "completions": _valid_completion, "embeddings": _valid_embedding}


def _mutated(draw: Any, body: dict[str, Any]) -> dict[str, Any]:
    """A valid body with one field replaced by junk, removed, or one junk field added."""
    body = copy.deepcopy(body)
    action = draw(st.sampled_from(["replace", "remove", "add", "message"]))
    keys = sorted(body)
    if action == "replace":
        body[draw(st.sampled_from(keys))] = draw(_junk)
    elif action == "remove":
        body.pop(draw(st.sampled_from(keys)))
    elif action == "add":
        body[draw(st.text(max_size=10))] = draw(_junk)
    elif isinstance(body.get("messages"), list) and body["messages"]:
        message = body["messages"][draw(st.integers(0, len(body["messages"]) - 1))]
        message[draw(st.sampled_from(["role", "content", "name", "tool_calls", "x"]))] = draw(_junk)
    return body


@st.composite
def _near_valid(draw: Any, endpoint: str) -> dict[str, Any]:
    return _mutated(draw, draw(VALID[endpoint]))


def _parse(endpoint: str, body: Any) -> dict[str, Any] | InvalidRequest:
    try:
        return intake.parse(endpoint, msgspec.json.encode(body), LIMITS)
    except InvalidRequest as exc:
        return exc


def _check_error(error: InvalidRequest, body: Any) -> None:
    assert error.status == 400
    assert error.message.strip()
    assert error.type == "invalid_request_error"
    if error.param is not None:
        root = re.split(r"[.\[]", error.param, maxsplit=1)[0]
        # The param names a field of the body, or a required one that is missing.
        assert root in body or root in ("model", "messages", "prompt", "input"), (error.param, body)


# --- request models ---------------------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(sorted(VALID)).flatmap(lambda e: st.tuples(st.just(e), VALID[e])))
def test_valid_bodies_pass_unchanged(case: tuple[str, dict[str, Any]]) -> None:
    endpoint, body = case
    if len(body["model"]) > intake.MAX_MODEL_CHARS or intake.ROUTING_FIELDS & set(body):
        return
    parsed = _parse(endpoint, body)
    assert not isinstance(parsed, InvalidRequest), (parsed.message, body)
    assert parsed == msgspec.json.decode(msgspec.json.encode(body))


@FUZZ
@given(st.sampled_from(sorted(VALID)).flatmap(lambda e: st.tuples(st.just(e), _near_valid(e))))
def test_near_valid_bodies_pass_or_get_a_400_naming_a_field(case: tuple[str, dict[str, Any]]) -> None:
    endpoint, body = case
    result = _parse(endpoint, body)
    if isinstance(result, InvalidRequest):
        _check_error(result, body)
    else:
        assert result == msgspec.json.decode(msgspec.json.encode(body))


@FUZZ
@given(st.sampled_from(sorted(VALID)), _junk)
def test_any_json_value_passes_or_gets_a_400(endpoint: str, body: Any) -> None:
    result = _parse(endpoint, body)
    if isinstance(result, InvalidRequest):
        _check_error(result, body if isinstance(body, dict) else {})


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.binary(max_size=200))
def test_any_bytes_pass_or_get_a_400(endpoint: str, raw: bytes) -> None:
    try:
        intake.parse(endpoint, raw, LIMITS)
    except InvalidRequest as exc:
        assert exc.status == 400
        assert exc.message.strip()


# --- the policy loader --------------------------------------------------------------------------------------

SECRET = "sk-policy-fuzz-secret-0123456789"
BASE: dict[str, Any] = {
    "backends": [
        {"name": "a", "type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "${FUZZ_SECRET}"},
        {"name": "b", "type": "anthropic", "api_key": "${FUZZ_SECRET}", "timeouts": {"total_s": 5}},
    ],
    "models": [
        {"name": "m", "targets": [{"backend": "a", "model": "x", "weight": 2}], "fallbacks": ["n"], "retries": 1},
        {
            "name": "n",
            "targets": [{"backend": "b", "model": "y"}],
            "pricing": {"input_per_mtok": 1, "output_per_mtok": 2},
        },
    ],
    "plugins": [{"use": "prompt_decorator", "system": "Be brief."}],
    "auth": {"keys": [{"name": "k", "key": "${FUZZ_SECRET}", "rpm": 5, "models": ["m"]}]},
    "limits": {"max_messages": 10},
    "server": {"cors": {"allow_origins": ["https://a.example"]}},
}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def _mutated_policy(draw: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "secret"]))
        if action == "replace":
            parent[path[-1]] = draw(_junk)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "secret":
            parent[path[-1]] = "${FUZZ_SECRET}"  # an env value where something else belongs
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(_junk)
        else:
            parent.append(draw(_junk))
    return doc


def test_the_base_policy_is_valid() -> None:
    assert isinstance(load_text(yaml.safe_dump(BASE), env={"FUZZ_SECRET": SECRET}).policy, Policy)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_policy())
def test_mutated_policies_load_or_fail_with_paths_and_no_secret(doc: dict[str, Any]) -> None:
    try:
        loaded = load_text(yaml.safe_dump(doc), "fuzz.yaml", env={"FUZZ_SECRET": SECRET})
    except PolicyError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert isinstance(problem, str) and problem.strip()
            assert SECRET not in problem
        assert SECRET not in str(exc)
    else:
        assert isinstance(loaded.policy, Policy)
        # Secret-typed fields never show; a secret an operator put in a name or prompt is theirs to show.
        where = [p for p in _paths(doc) if _at(doc, p) == "${FUZZ_SECRET}"]
        if all(p[-1] in ("api_key", "key") for p in where):
            assert SECRET not in repr(loaded.policy)


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@FUZZ
@given(st.text(max_size=300))
def test_any_text_loads_or_raises_policy_error(text: str) -> None:
    try:
        load_text(text, "fuzz.yaml", env={})
    except PolicyError as exc:
        assert exc.problems
