"""Retrieval-augmented generation: the document index the `rag` plugin serves from.

    documents.py   Markdown, text, HTML (BeautifulSoup), PDF (pypdf) -> titled sections
    chunking.py    sections -> chunks on paragraphs, sentences, words (size, overlap)
    model.py       Chunk, Manifest (what a version holds), chunk ids and digests
    ingest.py      files -> a new version, re-embedding only changed documents
    store.py       versions on disk, CURRENT, rollback; shared.py: versions in Redis for replicas
    search.py      dense (faiss) + BM25 (bm25s) fused with RRF; collection/metadata selections
    rerank.py      optional cross-encoder re-scoring
    inject.py      the query, numbered passages under a token budget, the injected messages
    evaluate.py    hit@k, context relevance, faithfulness, answer relevance (`gateway rag eval`)
    commands.py    the `gateway rag` subcommands

Guide: docs/rag.md.
"""
