"""`python -m bench.rag [--output FILE]`: RAG retrieval quality and the latency the rag plugin adds.

Quality: the labelled questions of tests/data/rag_questions.jsonl over the test corpus
(tests/data/rag_corpus: 38 documents, Markdown, text, HTML, PDF), hit@1 and hit@3 of dense, BM25 and
hybrid (RRF, k = 60) retrieval, on the held-out `test` split (the `tune` split, for choosing settings, is shown
beside it). Target: the right passage in the top 3 for >= 90%.

Latency: the corpus plus generated filler documents (a few thousand chunks), through the plugin's
own `on_request` (query embedding on the embedder thread, faiss + BM25 + fusion + token budget on a
worker thread, injection), one request at a time. Target: p50 < 30 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "rag_corpus"
QUESTIONS = ROOT / "tests" / "data" / "rag_questions.jsonl"
WORK = ROOT / ".bench" / "rag"
MODES = ("dense", "bm25", "hybrid")
FILLER_DOCS = 600  # x 5 sections: about 3,000 chunks with the corpus
TARGET_HIT3 = 0.90
TARGET_P50_MS = 30.0


def corpus_index() -> Path:
    """The test corpus ingested under .bench/rag/kb (re-ingest embeds only what changed)."""
    from gateway.rag.ingest import ingest
    from gateway.rag.store import IndexStore

    index = WORK / "kb"
    ingest(IndexStore(index), [CORPUS], progress=False)
    return index


def entry() -> str:
    """A rag plugin entry over the test corpus, for the proxy benchmark's heavy chain."""
    return f"{{use: rag, index: '{corpus_index()}'}}"


def quality(index: Path, top_k: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {mode: {"hit@1", "hit@3", "questions"}}}."""
    from gateway.embeddings import load_model
    from gateway.rag import evaluate
    from gateway.rag.store import IndexStore

    searcher = IndexStore(index).load()
    model = load_model(None)

    def encode(texts: list[str]) -> object:
        return model.encode(texts, normalize_embeddings=True, show_progress_bar=False)

    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in ("tune", "test"):
        questions = evaluate.load_questions(QUESTIONS, split)
        out[split] = {}
        for mode in MODES:
            results = evaluate.score(searcher, questions, encode, top_k=top_k, mode=mode)  # type: ignore[arg-type]
            totals = evaluate.summary(results, top_k)
            out[split][mode] = {
                "hit@1": float(totals["hit@1"] or 0),
                "hit@3": float(totals[f"hit@{top_k}"] or 0),
                "context_relevance": float(totals["context_relevance"] or 0),
                "questions": float(len(questions)),
            }
    return out


def filler(folder: Path, documents: int = FILLER_DOCS, seed: int = 7) -> None:
    """Deterministic generated documents (same bytes every run, so re-ingesting them embeds nothing)."""
    rng = random.Random(seed)
    words = sorted({w.strip(".,;:()").lower() for p in CORPUS.rglob("*.md") for w in p.read_text().split()})
    words = [w for w in words if w.isalpha() and len(w) > 3] + [f"project{n}" for n in range(400)]
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        sections = []
        for s in range(5):
            sentences = [" ".join(rng.choices(words, k=rng.randint(8, 16))).capitalize() + "." for _ in range(7)]
            sections.append(f"## Topic {n}-{s}\n" + " ".join(sentences))
        text = f"# Filler document {n}\n\n" + "\n\n".join(sections) + "\n"
        path = folder / f"doc{n:04d}.md"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def large_index() -> tuple[Path, int]:
    from gateway.rag.ingest import ingest
    from gateway.rag.store import IndexStore

    docs = WORK / "filler"
    filler(docs)
    index = WORK / "large"
    store = IndexStore(index)
    ingest(store, [CORPUS], progress=False)
    ingest(store, [docs], progress=True)
    return index, store.load().manifest.count


async def _latency(index: Path, requests: int) -> dict[str, float]:
    from gateway.loader import load_text
    from gateway.plugin import Caller, RequestContext
    from gateway.rag.evaluate import load_questions
    from plugins.rag import Rag, RagConfig

    route = load_text(
        'backends: [{name: b, type: openai, base_url: "http://127.0.0.1:9/v1"}]\n'
        "models: [{name: kb, targets: [{backend: b, model: x}]}]\n"
    ).policy.models[0]
    plugin = Rag(RagConfig(index=str(index), top_k=3))
    await plugin.start()
    questions = [q.question for q in load_questions(QUESTIONS)]
    timings: list[float] = []
    embed: list[float] = []
    search: list[float] = []
    assert plugin.live is not None and plugin.live.searcher is not None
    searcher = plugin.live.searcher
    try:
        for n in range(requests + 20):
            question = f"{questions[n % len(questions)]} ({n})"  # never the same text twice
            body = {"model": "kb", "messages": [{"role": "user", "content": question}]}
            ctx = RequestContext(f"bench-{n}", "chat", body, {}, Caller("bench", False), route, False)
            started = time.perf_counter()
            await plugin.on_request(ctx)
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            vector = await plugin.embedder.embed(question + " again")
            embed_elapsed = time.perf_counter() - started
            started = time.perf_counter()
            plugin._retrieve(searcher, question, vector, None)  # the worker thread's share, run inline
            search_elapsed = time.perf_counter() - started
            if n >= 20:  # warm-up: caches, allocator, thread pools
                timings.append(elapsed * 1000)
                embed.append(embed_elapsed * 1000)
                search.append(search_elapsed * 1000)
            assert "x-gateway-rag-sources" in ctx.response_headers
    finally:
        await plugin.close()
    timings.sort()
    return {
        "p50": statistics.median(timings),
        "p90": timings[int(len(timings) * 0.9)],
        "p99": timings[min(len(timings) - 1, int(len(timings) * 0.99))],
        "embed_p50": statistics.median(embed),
        "search_p50": statistics.median(search),
        "load": os.getloadavg()[0],
        "requests": float(requests),
    }


def latency(requests: int = 300) -> tuple[dict[str, float], int]:
    index, chunks = large_index()
    return asyncio.run(_latency(index, requests)), chunks


def report(requests: int = 300, *, only_latency: bool = False) -> str:
    figures = quality(corpus_index()) if not only_latency else None
    timing, chunks = latency(requests)
    if figures is None:
        return _latency_lines(timing, chunks)
    return _quality_lines(figures) + _latency_lines(timing, chunks)


def _quality_lines(figures: dict[str, dict[str, dict[str, float]]]) -> str:
    test = figures["test"]
    lines = [
        "Labelled questions over the test corpus (tests/data/rag_corpus, 38 documents in md/txt/html/pdf); "
        f"`test` is held out ({int(test['hybrid']['questions'])} questions), `tune` is for choosing settings "
        "(chunk size 800, overlap 120, RRF k = 60 were fixed before either split was scored). "
        f"Target: hit@3 >= {TARGET_HIT3:.0%} on `test`.",
        "",
        "| retrieval | test hit@1 | test hit@3 | tune hit@1 | tune hit@3 | context relevance (test) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        t, u = test[mode], figures["tune"][mode]
        lines.append(
            f"| {mode} | {t['hit@1']:.1%} | {t['hit@3']:.1%} | {u['hit@1']:.1%} | {u['hit@3']:.1%} "
            f"| {t['context_relevance']:.3f} |"
        )
    verdict = "met" if test["hybrid"]["hit@3"] >= TARGET_HIT3 else "NOT met"
    lines += ["", f"Hybrid hit@3 target {verdict}.", "", ""]
    return "\n".join(lines)


def _latency_lines(timing: dict[str, float], chunks: int) -> str:
    lines = [
        f"Latency the rag plugin adds (`on_request`: query embedding, faiss + BM25 + RRF, token budget, "
        f"injection), {chunks} chunks, one request at a time, {int(timing['requests'])} requests:",
        "",
        "| p50 | p90 | p99 | query embedding alone (p50) | search + fusion + token budget alone (p50) | target p50 |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {timing['p50']:.1f} ms | {timing['p90']:.1f} ms | {timing['p99']:.1f} ms | {timing['embed_p50']:.1f} ms "
        f"| {timing['search_p50']:.2f} ms "
        f"| < {TARGET_P50_MS:.0f} ms ({'met' if timing['p50'] < TARGET_P50_MS else 'NOT met'}) |",
        "",
        f"Load average during the run: {timing['load']:.1f} on {os.cpu_count()} CPUs (this machine is shared; the "
        "query embedding, about 7 ms on an idle core, dominates and grows with contention).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--requests", type=int, default=int(os.environ.get("BENCH_RAG_REQUESTS", "300")))
    parser.add_argument("--latency-only", action="store_true", help="skip the hit@k tables")
    args = parser.parse_args(argv)
    text = report(args.requests, only_latency=args.latency_only)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
