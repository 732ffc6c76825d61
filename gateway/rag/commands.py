"""`gateway rag ...`: ingest, versions, rollback, publish, search, eval.

Heavy imports (torch, faiss, bm25s) happen inside the handlers, so `gateway --help` stays fast.
Exit codes: 0 done; 1 nothing could be done (bad index, bad arguments); 3 ingested, but some files
could not be read (they are listed on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HELP = "build and inspect RAG indexes (ingest, versions, rollback, publish, search, eval)"


def add_parser(sub: Any) -> None:
    rag = sub.add_parser("rag", help=HELP, description="Build and inspect the document indexes of the rag plugin.")
    commands = rag.add_subparsers(dest="rag_command", metavar="RAG_COMMAND", required=True)

    ingest = commands.add_parser("ingest", help="read, chunk, embed files into a new index version")
    _index(ingest)
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (md, txt, html, pdf)")
    ingest.add_argument("--collection", default="default", help="collection of these documents (access control)")
    ingest.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata for filters")
    ingest.add_argument("--chunk-size", type=int, default=800, help="most characters per chunk (default 800)")
    ingest.add_argument("--overlap", type=int, default=120, help="characters repeated between chunks (default 120)")
    ingest.add_argument("--model-path", default=None, help="embedding model folder (default: packaged MiniLM)")
    ingest.add_argument("--keep", type=int, default=10, help="versions kept on disk (default 10)")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bars")
    _redis(ingest)

    versions = commands.add_parser("versions", help="list the index's versions")
    _index(versions)

    rollback = commands.add_parser("rollback", help="serve an earlier version again")
    _index(rollback)
    rollback.add_argument("--to", default=None, metavar="ID", help="version id (default: the one before current)")
    _redis(rollback)

    publish = commands.add_parser("publish", help="copy a version into Redis for replicas (store: redis)")
    _index(publish)
    publish.add_argument("--version", default=None, metavar="ID", help="version id (default: current)")
    _redis(publish, required=True)

    search = commands.add_parser("search", help="show what a query retrieves")
    _index(search)
    search.add_argument("query")
    search.add_argument("--top-k", type=int, default=3)
    search.add_argument("--mode", choices=("hybrid", "dense", "bm25"), default="hybrid")

    evaluate = commands.add_parser("eval", help="hit@k, context relevance, faithfulness, answer relevance")
    _index(evaluate)
    evaluate.add_argument("--questions", required=True, type=Path, help="JSONL: question, source, contains, answer")
    evaluate.add_argument("--split", default=None, help="only questions of this split (e.g. test)")
    evaluate.add_argument("--top-k", type=int, default=3)
    evaluate.add_argument("--mode", choices=("hybrid", "dense", "bm25"), default="hybrid")
    evaluate.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL of an LLM judge (optional)")
    evaluate.add_argument("--judge-model", default=None, help="the judge's model name (e.g. a model of the policy)")
    evaluate.add_argument("--judge-key-env", default=None, help="environment variable holding the judge's API key")
    evaluate.add_argument("--json", action="store_true", help="one JSON object per question, then the summary")


def _index(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="index folder")


def _redis(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("--redis-url", required=required, default=None, help="also publish to this Redis")
    parser.add_argument("--redis-index", required=required, default=None, help="name of the index in Redis")
    parser.add_argument("--namespace", default="llmgw", help="Redis key prefix (default llmgw)")


def run(args: argparse.Namespace) -> int:
    from gateway.rag.store import IndexStoreError

    handlers = {
        "ingest": _ingest,
        "versions": _versions,
        "rollback": _rollback,
        "publish": _publish,
        "search": _search,
        "eval": _eval,
    }
    try:
        return handlers[args.rag_command](args)
    except (IndexStoreError, ValueError, OSError) as exc:
        print(f"gateway rag {args.rag_command}: {exc}", file=sys.stderr)
        return 1


def _wants_redis(args: argparse.Namespace) -> bool:
    if bool(args.redis_url) != bool(args.redis_index):
        raise ValueError("--redis-url and --redis-index go together")
    return bool(args.redis_url)


def _ingest(args: argparse.Namespace) -> int:
    from gateway.rag.ingest import ingest
    from gateway.rag.store import IndexStore

    meta = dict(_pair(item) for item in args.meta)
    redis = _wants_redis(args)
    store = IndexStore(args.index)
    report = ingest(
        store, [Path(p) for p in args.paths], collection=args.collection, meta=meta, chunk_size=args.chunk_size,
        overlap=args.overlap, model_path=args.model_path, keep=args.keep, progress=not args.no_progress,
    )  # fmt: skip
    for failure in report.failed:
        print(f"error: {failure}", file=sys.stderr)
    where = f"version {report.version}" if report.version else f"unchanged (version {store.current_id()})"
    print(f"{args.index}: {where}: {report.summary()}")
    if redis and store.current_id():
        from gateway.rag.shared import publish

        version = publish(store, None, args.redis_url, args.namespace, args.redis_index)
        print(f"published {version} to redis as {args.redis_index}")
    if report.failed:
        return 3 if (report.version or report.unchanged) else 1
    return 0


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--meta {item!r}: expected KEY=VALUE")
    return key, value


def _versions(args: argparse.Namespace) -> int:
    from gateway.rag.store import IndexStore

    store = IndexStore(args.index)
    current = store.current_id()
    ids = store.version_ids()
    if not ids:
        print(f"{args.index}: no versions")
        return 1
    for version_id in ids:
        m = store.manifest(version_id)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created))
        mark = "*" if version_id == current else " "
        print(f"{mark} {m.id}  {when}  {len(m.documents)} docs  {m.count} chunks  {m.digest[:12]}  {m.summary}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from gateway.rag.store import IndexStore, IndexStoreError

    redis = _wants_redis(args)
    store = IndexStore(args.index)
    current = store.resolve()
    target = args.to
    if target is None:
        ids = store.version_ids()
        earlier = [v for v in ids if int(v[1:]) < int(current[1:])]
        if not earlier:
            raise IndexStoreError(f"{args.index}: no version before {current}")
        target = earlier[-1]
    store.set_current(target)
    print(f"{args.index}: now serving {target} (was {current})")
    if redis:
        from gateway.rag.shared import publish

        publish(store, target, args.redis_url, args.namespace, args.redis_index)
        print(f"redis {args.redis_index}: now serving {target}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from gateway.rag.shared import publish
    from gateway.rag.store import IndexStore

    version = publish(IndexStore(args.index), args.version, args.redis_url, args.namespace, args.redis_index)
    print(f"redis {args.redis_index}: now serving {version}")
    return 0


def _encoder(model: str) -> Any:
    from gateway.embeddings import load_model
    from gateway.rag.model import DEFAULT_MODEL

    loaded = load_model(None if model == DEFAULT_MODEL else model)
    return lambda texts: loaded.encode(texts, normalize_embeddings=True, show_progress_bar=False)


def _search(args: argparse.Namespace) -> int:
    from gateway.rag.store import IndexStore

    searcher = IndexStore(args.index).load()
    vector = _encoder(searcher.manifest.model)([args.query])[0]
    for n, hit in enumerate(searcher.search(args.query, vector, top_k=args.top_k, mode=args.mode), start=1):
        chunk = hit.chunk
        print(f"[{n}] {hit.score:.4f} {chunk.id} {chunk.source} :: {chunk.section or chunk.title}")
        print("    " + chunk.text[:200].replace("\n", " "))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from gateway.rag import evaluate
    from gateway.rag.store import IndexStore

    if bool(args.judge_url) != bool(args.judge_model):
        raise ValueError("--judge-url and --judge-model go together")
    searcher = IndexStore(args.index).load()
    questions = evaluate.load_questions(args.questions, args.split)
    results = evaluate.score(searcher, questions, _encoder(searcher.manifest.model), top_k=args.top_k, mode=args.mode)
    if args.judge_url:
        evaluate.judge(results, args.judge_url, args.judge_model, args.judge_key_env)
    if args.json:
        for r in results:
            row = {
                "question": r.question.question,
                "rank": r.rank,
                "chunks": [h.chunk.id for h in r.hits],
                "context_relevance": round(r.context_relevance, 4),
                "faithfulness": r.faithfulness,
                "answer_relevance": r.answer_relevance,
                "judge": r.judge or None,
            }
            print(json.dumps(row))
    totals = evaluate.summary(results, args.top_k)
    if args.json:
        print(json.dumps({"summary": totals}))
    else:
        for key, value in totals.items():
            print(f"{key:28} {'-' if value is None else value}")
    return 0
