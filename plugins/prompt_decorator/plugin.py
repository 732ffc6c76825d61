from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.plugin import CONTINUE, Plugin, PluginConfig, RequestContext, RequestDecision


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class PromptDecoratorConfig(PluginConfig):
    system: str | None = Field(None, description="Text added to the system message.")
    position: Literal["prepend", "append"] = Field(
        "prepend", description="Where `system` goes relative to an existing system message's text."
    )
    prepend_messages: tuple[Message, ...] = Field((), description="Messages placed before the conversation.")
    append_messages: tuple[Message, ...] = Field((), description="Messages placed after the conversation.")


def decorate(messages: list[dict[str, Any]], cfg: PromptDecoratorConfig) -> list[dict[str, Any]]:
    """The decorated conversation; the input list is not modified."""
    out = [m.model_dump() for m in cfg.prepend_messages] + [dict(m) for m in messages]
    if cfg.system:
        first = next((m for m in out if m.get("role") == "system"), None)
        if first is None:
            out.insert(0, {"role": "system", "content": cfg.system})
        elif isinstance(first.get("content"), str):
            parts = [cfg.system, first["content"]] if cfg.position == "prepend" else [first["content"], cfg.system]
            first["content"] = "\n\n".join(p for p in parts if p)
        else:
            # Content parts: add ours as its own text part so the client's parts stay untouched.
            part = {"type": "text", "text": cfg.system}
            existing = list(first.get("content") or [])
            first["content"] = [part, *existing] if cfg.position == "prepend" else [*existing, part]
    out.extend(m.model_dump() for m in cfg.append_messages)
    return out


class PromptDecorator(Plugin):
    """Adds system text and fixed messages to every chat request."""

    name = "prompt_decorator"
    Config = PromptDecoratorConfig
    config: PromptDecoratorConfig

    async def on_request(self, ctx: RequestContext) -> RequestDecision:
        if ctx.endpoint == "chat":
            ctx.body["messages"] = decorate(ctx.body["messages"], self.config)
        return CONTINUE
