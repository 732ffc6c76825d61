"""OpenAI request shapes the gateway checks before forwarding.

The models validate the fields the gateway and its plugins rely on and allow every other field:
the client's original body (not a re-serialised model) is what goes upstream, so fields we do not
know about pass through untouched.

The pydantic models are the definition (and what names the offending field in an error). A chat
request is first checked against msgspec `Struct` mirrors of them (`_Chat`), which validate in one C pass:
~1 us against pydantic's ~6.5 us per request here, and far less code on a stream's first-token path.
The mirrors accept nothing the pydantic models reject (tests/gateway/test_protocol.py checks both on the
same bodies); whatever they reject goes through pydantic, which has the final word and the message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.errors import InvalidRequest

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str = Field(min_length=1)


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: str = "function"
    function: FunctionCall


class Message(_Open):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(_Open):
    include_usage: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]


Probability = Annotated[float, Field(ge=0, le=2)]


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=128)
    temperature: Probability | None = None
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None

    @field_validator("messages")
    @classmethod
    def _message_content(cls, messages: list[Message]) -> list[Message]:
        for message in messages:
            if message.role in ("user", "system", "developer", "tool") and message.content is None:
                raise ValueError(f"a {message.role} message needs content")
        return messages


PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Open):
    model: str = Field(min_length=1)
    prompt: PromptInput
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=0)
    temperature: Probability | None = None


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: PromptInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: PromptInput) -> PromptInput:
        if value == [] or value == "":
            raise ValueError("input must not be empty")
        return value


REQUEST_MODELS: dict[str, type[_Open]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}


# msgspec mirrors of the chat models above (unknown fields are ignored, as `extra="allow"` keeps them).
class _ContentPart(msgspec.Struct):
    type: Annotated[str, Meta(min_length=1)]


class _FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct):
    id: str
    function: _FunctionCall
    type: str = "function"


class _Message(msgspec.Struct):
    role: Role
    content: str | list[_ContentPart] | None = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None


class _FunctionDef(msgspec.Struct):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _Tool(msgspec.Struct):
    function: _FunctionDef
    type: Literal["function"] = "function"


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]


class _Chat(msgspec.Struct):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[_Message], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop: str | list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: _ResponseFormat | None = None
    user: str | None = None


_NEED_CONTENT = frozenset({"user", "system", "developer", "tool"})
msgspec.json.Decoder(_Chat)  # resolves the mirrors' type hints now, not on the first request


def _chat_is_valid(body: dict[str, Any]) -> bool:
    """True when the msgspec mirror accepts the body (then pydantic would too); False: ask pydantic."""
    try:
        chat = msgspec.convert(body, _Chat, strict=True)
    except msgspec.ValidationError:
        return False
    return all(m.content is not None or m.role not in _NEED_CONTENT for m in chat.messages)


def check(endpoint: str, body: Any) -> None:
    """Raise InvalidRequest naming the first offending field; the body itself is not changed."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if endpoint == "chat" and _chat_is_valid(body):
        return
    try:
        REQUEST_MODELS[endpoint].model_validate(body, strict=True)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = _param(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "this field is required"
        raise InvalidRequest(f"{param}: {message}" if param else message, param=param or None) from None


_UNION_TAGS = {"str", "int", "float", "bool", "none", "ContentPart"}


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in _UNION_TAGS and not str(part).startswith(("list[", "function-", "dict[")):
            out += f".{part}" if out else str(part)
    return out
