from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.rag.store import IndexStore
from tests.rag.conftest import CORPUS, QUESTIONS


def docs_folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    shutil.copytree(CORPUS / "hr", docs / "hr")
    shutil.copy(CORPUS / "it" / "vpn.txt", docs / "vpn.txt")
    return docs


def test_ingest_reports_unreadable_files_and_ingests_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = docs_folder(tmp_path)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (docs / "latin1.md").write_bytes(b"# Caf\xe9")
    code = main(["rag", "ingest", "--index", str(tmp_path / "kb"), "--no-progress", str(docs)])
    out = capsys.readouterr()
    assert code == 3  # ingested, with errors
    assert "broken.pdf" in out.err and "latin1.md: not UTF-8" in out.err
    assert "version v0001: +13 added" in out.out and "2 failed" in out.out
    searcher = IndexStore(tmp_path / "kb").load()
    assert {c.source for c in searcher.chunks} >= {"docs/vpn.txt", "docs/hr/benefits.pdf", "docs/hr/onboarding.md"}
    assert all(c.collection == "default" for c in searcher.chunks)


def test_reingest_embeds_only_what_changed_and_versions_can_be_rolled_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = docs_folder(tmp_path)
    index = tmp_path / "kb"
    store = IndexStore(index)
    assert main(["rag", "ingest", "--index", str(index), "--no-progress", str(docs)]) == 0
    first = store.load()
    assert main(["rag", "ingest", "--index", str(index), "--no-progress", str(docs)]) == 0
    assert "unchanged (version v0001)" in capsys.readouterr().out  # nothing changed: no new version

    (docs / "vpn.txt").write_text("VPN\n\nThe VPN now disconnects after 8 hours.\n")
    (docs / "hr" / "conferences.txt").unlink()
    (docs / "new.md").write_text("# Canteen\n\nThe canteen closes at 15:00.\n")
    assert main(["rag", "ingest", "--index", str(index), "--no-progress", str(docs)]) == 0
    out = capsys.readouterr().out
    assert "version v0002: +1 added, ~1 changed, =11 unchanged, -1 removed, 0 failed" in out
    assert "(2 embedded)" in out  # one chunk each for the changed and the new file
    second = store.load()
    assert second.manifest.parent == "v0001" and second.manifest.digest != first.manifest.digest
    assert not any(c.source == "docs/hr/conferences.txt" for c in second.chunks)
    assert any("8 hours" in c.text for c in second.chunks)
    kept = next(c for c in second.chunks if c.source == "docs/hr/onboarding.md")
    assert kept in first.chunks  # same id, text and metadata
    assert np.array_equal(second.vector(kept), first.vector(kept))  # carried over, not re-embedded

    assert main(["rag", "versions", "--index", str(index)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("  v0001") and listing[1].startswith("* v0002")
    assert main(["rag", "rollback", "--index", str(index)]) == 0
    assert "now serving v0001 (was v0002)" in capsys.readouterr().out
    assert store.load().manifest.digest == first.manifest.digest
    assert main(["rag", "rollback", "--index", str(index), "--to", "v0002"]) == 0
    assert store.current_id() == "v0002"
    assert main(["rag", "rollback", "--index", str(index), "--to", "v0009"]) == 1
    assert "no version 'v0009'" in capsys.readouterr().err


def test_collections_and_metadata_are_recorded_and_a_changed_collection_re_ingests(tmp_path: Path) -> None:
    docs = docs_folder(tmp_path)
    index = tmp_path / "kb"
    assert main(["rag", "ingest", "--index", str(index), "--no-progress", "--collection", "hr", str(docs / "hr")]) == 0
    assert (
        main(["rag", "ingest", "--index", str(index), "--no-progress", "--meta", "team=it", str(docs / "vpn.txt")]) == 0
    )
    chunks = IndexStore(index).load().chunks
    assert {c.collection for c in chunks if c.source.startswith("hr/")} == {"hr"}
    vpn = [c for c in chunks if c.source == "vpn.txt"]
    assert vpn and all(c.collection == "default" and c.field("team") == "it" for c in vpn)


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rag", "versions", "--index", str(tmp_path / "none")]) == 1
    assert main(["rag", "search", "--index", str(tmp_path / "none"), "leave"]) == 1
    assert "no index yet; run `gateway rag ingest" in capsys.readouterr().err
    assert main(["rag", "ingest", "--index", str(tmp_path / "kb"), str(tmp_path / "missing")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["rag", "ingest", "--index", str(tmp_path / "kb"), "--meta", "novalue", str(tmp_path)]) == 1
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_eval_reports_hit_rate_and_embedding_scores(
    corpus_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "q.jsonl"
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()[:4]]
    rows[0]["answer"] = "Full-time employees get 27 days of paid annual leave per year [1]."
    rows[1]["answer"] = "Penguins live in Antarctica."
    questions.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["rag", "search", "--index", str(corpus_index), "--top-k", "2", rows[0]["question"]]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("[1] ") and rows[0]["source"] in shown[0] and shown[2].startswith("[2] ")
    assert main(["rag", "eval", "--index", str(corpus_index), "--questions", str(questions), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    per_question, summary = lines[:-1], lines[-1]["summary"]
    assert len(per_question) == 4 and summary["questions"] == 4
    assert per_question[0]["rank"] is not None and len(per_question[0]["chunks"]) == 3
    grounded, unrelated = per_question[0], per_question[1]
    assert grounded["faithfulness"] > unrelated["faithfulness"] + 0.3
    assert grounded["answer_relevance"] > unrelated["answer_relevance"] + 0.3
    assert per_question[2]["faithfulness"] is None
    assert 0 < summary["context_relevance"] <= 1 and summary["hit@3"] == pytest.approx(
        sum(r["rank"] is not None for r in per_question) / 4
    )


def test_a_file_that_turns_unreadable_keeps_its_chunks_and_new_chunking_re_embeds_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha paragraph one.\n\nAlpha paragraph two.\n")
    (docs / "b.txt").write_text("B\n\nBeta text.\n")
    index = tmp_path / "kb"
    store = IndexStore(index)
    assert main(["rag", "ingest", "--index", str(index), "--no-progress", str(docs)]) == 0
    before = store.load().chunks
    (docs / "b.txt").write_bytes(b"\xff\xfe broken now")
    (docs / "a.md").write_text("# A\n\nAlpha changed.\n")
    assert main(["rag", "ingest", "--index", str(index), "--no-progress", str(docs)]) == 3
    out = capsys.readouterr()
    assert "b.txt: not UTF-8" in out.err and "~1 changed" in out.out
    after = store.load().chunks
    assert [c for c in after if c.source == "docs/b.txt"] == [c for c in before if c.source == "docs/b.txt"]

    (docs / "b.txt").write_text("B\n\nBeta text, readable again and somewhat longer than before.\n")
    command = ["rag", "ingest", "--index", str(index), "--no-progress", "--chunk-size", "20", "--overlap", "0"]
    assert main([*command, str(docs)]) == 0
    out = capsys.readouterr().out
    assert "~2 changed" in out
    rechunked = store.load()
    assert rechunked.manifest.chunk_size == 20 and len(rechunked.chunks) > len(after)
    assert f"({len(rechunked.chunks)} embedded)" in out  # every chunk re-embedded with the new settings
