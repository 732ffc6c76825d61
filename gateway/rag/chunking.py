"""Splitting a document into chunks: sections first, then paragraphs, then sentences, then words.

A chunk never spans two sections (headings are where topics change). Within a section, whole
paragraphs are packed up to `size` characters; a paragraph longer than that is split on sentence
ends, and a sentence longer than that on spaces. Each chunk after the first of a section starts with
the last `overlap` characters of the one before (cut at a word), so a fact split across two chunks
is whole in one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.rag.documents import Document

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Piece:
    heading: str
    text: str
    page: int | None


def chunk_document(document: Document, size: int, overlap: int) -> list[Piece]:
    if overlap >= size:
        raise ValueError(f"overlap ({overlap}) must be smaller than the chunk size ({size})")
    pieces: list[Piece] = []
    for section in document.sections:
        for text in chunk_text(section.text, size, overlap):
            pieces.append(Piece(section.heading, text, section.page))
    return pieces


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    units = [u for p in _PARAGRAPH.split(text) for u in _units(_clean(p), size)]
    chunks: list[str] = []
    current = ""
    for unit in units:
        if current and len(current) + 2 + len(unit) > size:
            chunks.append(current)
            tail = _tail(current, overlap)
            current = f"{tail} {unit}" if tail and len(tail) + 1 + len(unit) <= size else unit
        else:
            current = f"{current}\n\n{unit}" if current else unit
    if current:
        chunks.append(current)
    return chunks


def _clean(paragraph: str) -> str:
    lines = [" ".join(line.split()) for line in paragraph.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def _units(paragraph: str, size: int) -> list[str]:
    """The paragraph itself if it fits, else its sentences, else words packed up to `size`."""
    if not paragraph:
        return []
    if len(paragraph) <= size:
        return [paragraph]
    out: list[str] = []
    for sentence in _SENTENCE.split(paragraph):
        if len(sentence) <= size:
            out.append(sentence)
            continue
        words, line = sentence.split(), ""
        for word in words:
            while len(word) > size:  # a "word" longer than a chunk (a URL, a hash): hard split
                if line:
                    out.append(line)
                    line = ""
                out.append(word[:size])
                word = word[size:]
            if line and len(line) + 1 + len(word) > size:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            out.append(line)
    return _pack(out, size)


def _pack(units: list[str], size: int) -> list[str]:
    packed: list[str] = []
    for unit in units:
        if packed and len(packed[-1]) + 1 + len(unit) <= size:
            packed[-1] = f"{packed[-1]} {unit}"
        else:
            packed.append(unit)
    return packed


def _tail(text: str, overlap: int) -> str:
    """The last `overlap` characters of `text`, starting at a word (never half a word; "" if none fits)."""
    if overlap <= 0:
        return ""
    if len(text) <= overlap:
        return text
    tail = text[-overlap:]
    if text[-overlap - 1].isspace():
        return tail.strip()
    parts = tail.split(maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else ""
