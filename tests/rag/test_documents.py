from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rag.chunking import chunk_document, chunk_text
from gateway.rag.documents import DocumentError, html_document, markdown_document, read_document, text_document
from tests.rag.conftest import CORPUS


def test_markdown_splits_on_headings_with_their_path_and_skips_code_fences() -> None:
    text = (
        "# Leave\nintro\n## Entitlement\n27 days\n### Part-time\npro rata\n```\n# not a heading\n```\n"
        "## Carry-over\n5 days"
    )
    document = markdown_document(text, "fallback")
    assert document.title == "Leave"
    assert [(s.heading, s.text) for s in document.sections] == [
        ("", "intro"),
        ("Entitlement", "27 days"),
        ("Entitlement > Part-time", "pro rata\n```\n# not a heading\n```"),
        ("Carry-over", "5 days"),
    ]


def test_html_keeps_headings_paragraphs_and_lists_and_drops_scripts_and_navigation() -> None:
    html = (
        "<html><head><title>Desk</title><style>p{}</style></head><body><nav>Home | IT</nav><h1>Desk</h1>"
        "<h2>Hours</h2><p>Open  8:00 to\n18:00.</p><ul><li>P1 in 30 minutes</li></ul>"
        "<script>track()</script></body></html>"
    )
    document = html_document(html, "x")
    assert document.kind == "html" and document.title == "Desk"
    assert [(s.heading, s.text) for s in document.sections] == [("Hours", "Open 8:00 to 18:00.\n\n- P1 in 30 minutes")]


def test_text_takes_a_short_first_line_as_its_title() -> None:
    assert text_document("VPN\n\nUse the client.", "vpn").title == "VPN"
    assert text_document("VPN\n\nUse the client.", "vpn").sections[0].text == "Use the client."
    untitled = text_document("A first line that runs straight on\ninto the next one.", "my_notes")
    assert untitled.title == "My notes" and untitled.sections[0].text.startswith("A first line")


def test_a_pdf_is_read_page_by_page() -> None:
    document = read_document(CORPUS / "finance" / "travel-policy.pdf")
    assert document.kind == "pdf" and document.title == "Business travel policy"
    assert [s.page for s in document.sections] == [1, 2]
    assert "meal allowance of 45 euros" in " ".join(document.sections[1].text.split())


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.txt", b"caf\xe9", "not UTF-8"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "broken.pdf"),
        ("notes.docx", b"PK", "unsupported file type .docx"),
    ],
)
def test_unreadable_files_raise_an_error_naming_them(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError) as failure:
        read_document(path)
    assert message in str(failure.value) and name in str(failure.value)


def test_chunks_respect_the_size_and_repeat_the_overlap() -> None:
    paragraphs = [f"Paragraph {n} says something about topic {n}. It has a second sentence too." for n in range(12)]
    chunks = chunk_text("\n\n".join(paragraphs), size=200, overlap=40)
    assert len(chunks) > 3
    assert all(len(c) <= 200 for c in chunks)
    for before, after in itertools.pairwise(chunks):
        start = after.split(" Paragraph", 1)[0]  # what was carried over from the chunk before
        assert start and before.endswith(start)
    joined = " ".join(chunks)
    assert all(p in joined for p in paragraphs)  # no paragraph lost


def test_long_sentences_and_words_are_split_to_fit() -> None:
    text = "word " * 120 + "x" * 250
    chunks = chunk_text(text, size=100, overlap=0)
    assert all(len(c) <= 100 for c in chunks)
    assert "".join(chunks).replace(" ", "").count("x") == 250


def test_a_chunk_never_spans_two_sections() -> None:
    document = markdown_document("# T\n## A\n" + "alpha " * 50 + "\n## B\nbeta", "t")
    pieces = chunk_document(document, size=120, overlap=20)
    assert {p.heading for p in pieces} == {"A", "B"}
    assert all("beta" not in p.text for p in pieces if p.heading == "A")
    with pytest.raises(ValueError, match="overlap"):
        chunk_document(document, size=100, overlap=100)


_words = st.text(alphabet="abcdefghij.!?", min_size=1, max_size=15)


@given(
    paragraphs=st.lists(st.lists(_words, min_size=1, max_size=40).map(" ".join), min_size=1, max_size=8),
    size=st.integers(min_value=20, max_value=300),
    overlap_share=st.floats(min_value=0, max_value=0.5),
)
@settings(max_examples=300, deadline=None)
def test_chunking_keeps_every_word_in_order_within_the_size(
    paragraphs: list[str], size: int, overlap_share: float
) -> None:
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, size=size, overlap=int(size * overlap_share))
    assert all(0 < len(c) <= size for c in chunks)
    words = text.split()
    # Each chunk is a run of whole input words: some repeated (the overlap), then at least one new one.
    # Repetitive text can make where a chunk starts ambiguous, so every consistent reading is followed:
    # `ends` holds each possible count of input words covered so far.
    ends = {0}
    for chunk in chunks:
        run = chunk.split()
        ends = {
            end - repeated + len(run)
            for end in ends
            for repeated in range(min(end, len(run) - 1) + 1)
            if run == words[end - repeated : end - repeated + len(run)]
        }
        assert ends, (chunk, chunks)
    assert len(words) in ends
