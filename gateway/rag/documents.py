"""Reading documents into titled sections: Markdown, plain text, HTML (BeautifulSoup) and PDF (pypdf).

Each reader returns a `Document` whose sections split on the document's own structure (Markdown and
HTML headings, PDF pages, a text file as one section); the chunker then splits sections on paragraphs.
A file that cannot be read raises `DocumentError` naming it, so ingestion can report it and go on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

KINDS = {".md": "md", ".markdown": "md", ".txt": "txt", ".text": "txt", ".html": "html", ".htm": "html", ".pdf": "pdf"}
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_BLOCKS = {"p", "li", "pre", "blockquote", "dt", "dd", "td", "th", "figcaption", "caption"}
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_SKIPPED = {"script", "style", "nav", "noscript", "template", "head"}


class DocumentError(Exception):
    """A file that cannot be read or parsed; the message names the file and the cause."""


@dataclass(slots=True)
class Section:
    heading: str  # the heading path, "Leave > Carry-over"; "" before the first heading
    text: str
    page: int | None = None


@dataclass(slots=True)
class Document:
    kind: str
    title: str
    sections: list[Section] = field(default_factory=list)


def kind_of(path: Path) -> str | None:
    return KINDS.get(path.suffix.lower())


def read_document(path: Path) -> Document:
    kind = kind_of(path)
    if kind is None:
        raise DocumentError(f"{path}: unsupported file type {path.suffix or '(none)'}")
    try:
        if kind == "pdf":
            return _read_pdf(path)
        text = path.read_bytes().decode("utf-8-sig")
    except DocumentError:
        raise
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except Exception as exc:  # OSError, a broken PDF: whatever the reader raised, named
        raise DocumentError(f"{path}: {exc.__class__.__name__}: {exc}") from exc
    if kind == "md":
        return markdown_document(text, path.stem)
    if kind == "html":
        return html_document(text, path.stem)
    return text_document(text, path.stem)


def markdown_document(text: str, fallback_title: str) -> Document:
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []  # the open headings, outermost first
    lines: list[str] = []
    title = ""
    fenced = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(" > ".join(h for _, h in stack), body))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match is None:
            lines.append(line)
            continue
        flush()
        level, heading = len(match.group(1)), match.group(2).strip()
        while stack and stack[-1][0] >= level:
            stack.pop()
        if level == 1 and not title:
            title = heading  # the document's title, not part of its sections' headings
            continue
        stack.append((level, heading))
    flush()
    return Document("md", title or _humanize(fallback_title), sections)


def text_document(text: str, fallback_title: str) -> Document:
    body = text.strip()
    first = body.split("\n", 1)[0].strip()
    # A short first line followed by a blank line reads as the title.
    title = first if first and len(first) <= 100 and body[len(first) :].lstrip(" \t\r").startswith("\n\n") else ""
    body = body[len(first) :].strip() if title else body
    return Document("txt", title or _humanize(fallback_title), [Section("", body)] if body else [])


def html_document(html: str, fallback_title: str) -> Document:
    from bs4 import BeautifulSoup
    from bs4.element import NavigableString, Tag

    soup = BeautifulSoup(html, "html.parser")
    out: list[str] = []

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, Tag):
                name = child.name.lower()
                if name in _SKIPPED:
                    continue
                text = " ".join(child.get_text(" ", strip=True).split())
                if name in _HEADINGS and text:
                    out.append("#" * _HEADINGS[name] + " " + text)
                elif name in _BLOCKS and text:
                    out.append(("- " if name == "li" else "") + text)
                else:
                    walk(child)
            elif isinstance(child, NavigableString) and child.strip() and type(child) is NavigableString:
                out.append(" ".join(child.split()))

    walk(soup.body or soup)
    document = markdown_document("\n\n".join(out), fallback_title)
    head_title = soup.title.get_text(strip=True) if soup.title else ""
    document.kind = "html"
    document.title = head_title or document.title
    return document


def _read_pdf(path: Path) -> Document:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted:
        raise DocumentError(f"{path}: the PDF is encrypted")
    sections: list[Section] = []
    for number, page in enumerate(reader.pages, start=1):
        text = (page.extract_text() or "").strip()
        if text:
            sections.append(Section(f"page {number}", text, page=number))
    if not sections:
        raise DocumentError(f"{path}: no text could be extracted (a scanned PDF?)")
    meta_title = reader.metadata.title if reader.metadata is not None else None
    first_line = sections[0].text.split("\n", 1)[0].strip()
    title = (meta_title or "").strip() or (first_line if len(first_line) <= 100 else "") or _humanize(path.stem)
    return Document("pdf", title, sections)


def _humanize(stem: str) -> str:
    return stem.replace("_", " ").replace("-", " ").strip().capitalize() or "Untitled"
