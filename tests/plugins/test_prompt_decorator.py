"""prompt_decorator: the pure `decorate` function, the plugin's request phase, and its config."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from gateway import registry
from gateway.plugin import CONTINUE, Caller, RequestContext
from gateway.policy import ModelRoute, Target
from plugins.prompt_decorator import PLUGIN, PromptDecorator, PromptDecoratorConfig, decorate


def cfg(**options: Any) -> PromptDecoratorConfig:
    return PromptDecoratorConfig.model_validate(options)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def system(content: Any) -> dict[str, Any]:
    return {"role": "system", "content": content}


def test_no_options_returns_an_equal_copy() -> None:
    messages = [system("s"), user("u")]
    out = decorate(messages, cfg())
    assert out == messages
    assert out is not messages
    assert all(a is not b for a, b in zip(out, messages, strict=True))


def test_system_added_first_when_there_is_none() -> None:
    assert decorate([user("hi")], cfg(system="Be brief.")) == [system("Be brief."), user("hi")]


@pytest.mark.parametrize(
    ("position", "expected"),
    [("prepend", "Be brief.\n\nYou are a bot."), ("append", "You are a bot.\n\nBe brief.")],
)
def test_system_merged_into_existing_system_string(position: str, expected: str) -> None:
    messages = [system("You are a bot."), user("hi")]
    assert decorate(messages, cfg(system="Be brief.", position=position)) == [system(expected), user("hi")]


def test_position_defaults_to_prepend() -> None:
    assert decorate([system("old")], cfg(system="new")) == [system("new\n\nold")]


def test_empty_existing_system_string_gets_no_separator() -> None:
    assert decorate([system(""), user("hi")], cfg(system="S", position="append")) == [system("S"), user("hi")]


def test_only_the_first_system_message_is_changed() -> None:
    messages = [user("a"), system("first"), user("b"), system("second")]
    assert decorate(messages, cfg(system="S")) == [user("a"), system("S\n\nfirst"), user("b"), system("second")]


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ("prepend", [{"type": "text", "text": "S"}, {"type": "text", "text": "client"}]),
        ("append", [{"type": "text", "text": "client"}, {"type": "text", "text": "S"}]),
    ],
)
def test_system_as_content_parts_gets_its_own_part(position: str, expected: list[dict[str, Any]]) -> None:
    messages = [system([{"type": "text", "text": "client"}]), user("hi")]
    assert decorate(messages, cfg(system="S", position=position)) == [system(expected), user("hi")]


def test_system_with_null_content_gets_a_single_part() -> None:
    assert decorate([system(None)], cfg(system="S")) == [system([{"type": "text", "text": "S"}])]


def test_prepend_and_append_messages() -> None:
    options = cfg(
        prepend_messages=[{"role": "user", "content": "example q"}, {"role": "assistant", "content": "example a"}],
        append_messages=[{"role": "developer", "content": "answer in French"}],
    )
    assert decorate([user("real q")], options) == [
        user("example q"),
        {"role": "assistant", "content": "example a"},
        user("real q"),
        {"role": "developer", "content": "answer in French"},
    ]


def test_new_system_goes_before_prepended_messages() -> None:
    options = cfg(system="S", prepend_messages=[{"role": "user", "content": "p"}], append_messages=[user("z")])
    assert decorate([user("q")], options) == [system("S"), user("p"), user("q"), user("z")]


def test_input_is_not_mutated() -> None:
    parts = [{"type": "text", "text": "client"}]
    messages = [system("str system"), user("hi")]
    with_parts = [system(parts), user("hi")]
    before, before_parts = copy.deepcopy(messages), copy.deepcopy(with_parts)
    options = cfg(system="S", position="append", prepend_messages=[user("p")], append_messages=[user("a")])
    decorate(messages, options)
    decorate(with_parts, options)
    assert messages == before
    assert with_parts == before_parts
    assert with_parts[0]["content"] is parts and parts == [{"type": "text", "text": "client"}]


def test_config_messages_are_fresh_on_every_call() -> None:
    options = cfg(prepend_messages=[user("p")])
    first = decorate([], options)
    first[0]["content"] = "changed"
    assert decorate([], options) == [user("p")]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "loc"),
    [
        ({"sytem": "x"}, ("sytem",)),
        ({"prepend_messages": [{"role": "user", "content": "x", "name": "bob"}]}, ("prepend_messages", 0, "name")),
        ({"append_messages": [{"role": "user", "contnt": "x"}]}, ("append_messages", 0, "contnt")),
    ],
)
def test_config_rejects_unknown_keys(options: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        cfg(**options)
    extra = [e for e in info.value.errors() if e["type"] == "extra_forbidden"]
    assert [tuple(e["loc"]) for e in extra] == [loc]


@pytest.mark.parametrize(
    "options",
    [
        {"position": "middle"},
        {"system": 5},
        {"prepend_messages": [{"role": "tool", "content": "x"}]},
        {"append_messages": [{"role": "user"}]},
        {"prepend_messages": "not a list"},
    ],
)
def test_config_rejects_bad_values(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        cfg(**options)


def test_config_is_frozen() -> None:
    options = cfg(system="x")
    with pytest.raises(ValidationError):
        options.system = "y"  # type: ignore[misc]


def test_config_defaults() -> None:
    options = cfg()
    assert (options.system, options.position, options.prepend_messages, options.append_messages) == (
        None,
        "prepend",
        (),
        (),
    )


# ----------------------------------------------------------------------------- the plugin


def _ctx(endpoint: str, body: dict[str, Any]) -> RequestContext:
    return RequestContext(
        request_id="r",
        endpoint=endpoint,  # type: ignore[arg-type]
        body=body,
        headers={},
        caller=Caller("c", False),
        route=ModelRoute(name="m", targets=[Target(backend="b", model="x")]),
        stream=False,
    )


def test_registered_under_its_name() -> None:
    assert PLUGIN is PromptDecorator
    assert registry.get("prompt_decorator") is PromptDecorator
    assert PromptDecorator.Config is PromptDecoratorConfig
    assert PromptDecorator.name == "prompt_decorator"


async def test_on_request_decorates_chat_messages() -> None:
    plugin = PromptDecorator(cfg(system="S"))
    ctx = _ctx("chat", {"model": "m", "messages": [user("hi")]})
    assert await plugin.on_request(ctx) is CONTINUE
    assert ctx.body == {"model": "m", "messages": [system("S"), user("hi")]}


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [("completions", {"model": "m", "prompt": "hi"}), ("embeddings", {"model": "m", "input": "hi"})],
)
async def test_on_request_leaves_other_endpoints_alone(endpoint: str, body: dict[str, Any]) -> None:
    plugin = PromptDecorator(cfg(system="S", append_messages=[user("z")]))
    ctx = _ctx(endpoint, copy.deepcopy(body))
    assert await plugin.on_request(ctx) is CONTINUE
    assert ctx.body == body
