"""Building the augmented prompt: the query, the numbered passages under a token budget, the injection.

Pure functions of the messages, the hits and the options (no I/O), so they are tested directly:

    query_text(messages, window)        the last user turn, with up to `window` earlier turns before it
    numbered(hits, template, budget)    passages in rank order, numbered from 1, within `budget` tokens
    inject(messages, ...)               new messages with the context as a system message or user prefix
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway import tokens
from gateway.rag.search import Hit

InjectAs = Literal["system", "user_prefix"]
PASSAGE_FIELDS = frozenset({"n", "id", "source", "title", "section", "heading", "text", "page"})
TEMPLATE_FIELDS = frozenset({"context", "question", "sources"})
SYSTEM_TEMPLATE = (
    "Answer with the help of the numbered passages below when they are relevant, and cite them by number "
    "like [1]. If they do not contain the answer, say so.\n\n{context}"
)
USER_TEMPLATE = (
    "Passages:\n{context}\n\nAnswer the question with the help of the passages above, citing them by number "
    "like [1].\n\nQuestion: {question}"
)
PASSAGE_TEMPLATE = "[{n}] {heading} ({source})\n{text}"


@dataclass(frozen=True, slots=True)
class Passage:
    number: int
    hit: Hit
    rendered: str
    tokens: int


def fields_of(template: str) -> set[str]:
    """The placeholder names a str.format template uses; ValueError for a malformed one."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(template: str, allowed: frozenset[str]) -> str:
    unknown = fields_of(template) - allowed
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; use {sorted(allowed)}")
    return template


def text_of(content: Any) -> str | None:
    """A message's text: a string, or text parts only (None for images/audio: nothing to search with)."""
    if isinstance(content, str):
        return content.strip() or None
    if isinstance(content, list) and content:
        parts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None for p in content]
        if all(isinstance(t, str) for t in parts):
            return "\n".join(t for t in parts if t).strip() or None
    return None


def query_text(messages: Sequence[dict[str, Any]], window: int = 0) -> str | None:
    if not messages or messages[-1].get("role") != "user":
        return None
    last = text_of(messages[-1].get("content"))
    if last is None:
        return None
    earlier: list[str] = []
    for message in reversed(messages[:-1]):
        if len(earlier) >= window:
            break
        text = text_of(message.get("content")) if message.get("role") in ("user", "assistant") else None
        if text:
            earlier.append(text)
    return "\n".join([*reversed(earlier), last])


def render_passage(template: str, number: int, hit: Hit, text: str | None = None) -> str:
    chunk = hit.chunk
    heading = f"{chunk.title} - {chunk.section}" if chunk.section else chunk.title
    return template.format(
        n=number,
        id=chunk.id,
        source=chunk.source,
        title=chunk.title,
        section=chunk.section,
        heading=heading,
        text=chunk.text if text is None else text,
        page="" if chunk.page is None else chunk.page,
    )


def numbered(hits: Sequence[Hit], template: str, budget: int) -> list[Passage]:
    """Passages in rank order while they fit in `budget` tokens; the first is cut to fit if it alone is too long."""
    passages: list[Passage] = []
    used = 0
    for hit in hits:
        number = len(passages) + 1
        rendered = render_passage(template, number, hit)
        cost = tokens.count(rendered) + (1 if passages else 0)  # the blank line between passages
        if used + cost > budget:
            if passages:
                break
            rendered = _cut(template, number, hit, budget)
            cost = tokens.count(rendered)
            if not rendered or cost > budget:
                break
        passages.append(Passage(number, hit, rendered, cost))
        used += cost
    return passages


def _cut(template: str, number: int, hit: Hit, budget: int) -> str:
    frame = tokens.count(render_passage(template, number, hit, text=""))
    room = budget - frame - 1
    if room <= 0:
        return ""
    encoding = tokens.encoding()
    text = encoding.decode(encoding.encode(hit.chunk.text, disallowed_special=())[:room]).rstrip()
    return render_passage(template, number, hit, text=text + " ...")


def inject(
    messages: Sequence[dict[str, Any]],
    passages: Sequence[Passage],
    *,
    inject_as: InjectAs,
    template: str,
    question: str,
) -> list[dict[str, Any]]:
    """New messages carrying the passages; the input is not modified."""
    context = "\n\n".join(p.rendered for p in passages)
    sources = ", ".join(dict.fromkeys(p.hit.chunk.source for p in passages))
    text = template.format(context=context, question=question, sources=sources)
    out = [dict(m) for m in messages]
    if inject_as == "user_prefix":
        out[-1]["content"] = text if isinstance(out[-1].get("content"), str) else [{"type": "text", "text": text}]
        return out
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = f"{out[0]['content']}\n\n{text}"
    else:
        out.insert(0, {"role": "system", "content": text})
    return out
