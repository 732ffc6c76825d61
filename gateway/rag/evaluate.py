"""`gateway rag eval`: offline retrieval and answer quality over a labelled question file.

Each JSONL line: {"question": ..., "source"?: the document that answers it, "contains"?: a phrase of
the right passage, "answer"?: an answer to judge, "split"?: tune | test}. Measured per question, with
the index's own embedding model (cosine similarity of normalised MiniLM vectors):

    hit@1, hit@k          the right passage (source, and the phrase if given) ranked first / in the top k
    context relevance     mean cosine of the question and each retrieved passage
    faithfulness          per answer sentence, its best cosine with a retrieved passage; the mean
    answer relevance      cosine of the question and the answer

An optional LLM judge (any OpenAI-compatible endpoint, e.g. a model of the gateway's policy) scores
the same three from 0 to 1; answers it gives that are not that JSON are counted as unparsed.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import numpy as np
import numpy.typing as npt

from gateway.rag.search import Hit, Mode, Searcher

Encoder = Callable[[list[str]], npt.NDArray[np.float32]]
JUDGED = ("context_relevance", "faithfulness", "answer_relevance")
_SENTENCES = re.compile(r"(?<=[.!?])\s+")
JUDGE_PROMPT = (
    "Rate a retrieval-augmented answer. Reply with JSON only: "
    '{{"context_relevance": x, "faithfulness": y, "answer_relevance": z}}, each from 0 to 1 '
    "(faithfulness and answer_relevance null when there is no answer).\n\n"
    "Question: {question}\n\nRetrieved passages:\n{context}\n\nAnswer: {answer}"
)


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    source: str | None = None
    contains: str | None = None
    answer: str | None = None
    split: str | None = None


@dataclass(slots=True)
class Scored:
    question: Question
    hits: list[Hit]
    rank: int | None  # 1-based rank of the right passage, None when missed or unlabelled
    context_relevance: float
    faithfulness: float | None = None
    answer_relevance: float | None = None
    judge: dict[str, float | None] = field(default_factory=dict)


def load_questions(path: Path, split: str | None = None) -> list[Question]:
    out: list[Question] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            question = Question(
                item["question"], item.get("source"), item.get("contains"), item.get("answer"), item.get("split")
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a question line ({exc})") from exc
        if split is None or question.split == split:
            out.append(question)
    return out


def matches(hit: Hit, question: Question) -> bool:
    if question.source is None or hit.chunk.source != question.source:
        return False
    return question.contains is None or " ".join(question.contains.lower().split()) in " ".join(
        hit.chunk.text.lower().split()
    )


def rank_of(hits: Sequence[Hit], question: Question) -> int | None:
    return next((n for n, hit in enumerate(hits, start=1) if matches(hit, question)), None)


def score(
    searcher: Searcher, questions: Sequence[Question], encode: Encoder, *, top_k: int = 3, mode: Mode = "hybrid"
) -> list[Scored]:
    vectors = encode([q.question for q in questions]) if questions else np.zeros((0, searcher.manifest.dimension))
    out: list[Scored] = []
    for question, vector in zip(questions, vectors, strict=True):
        hits = searcher.search(question.question, vector, top_k=top_k, mode=mode)
        chunk_vectors = [searcher.vector(h.chunk) for h in hits]
        relevance = mean(float(np.dot(vector, c)) for c in chunk_vectors) if hits else 0.0
        scored = Scored(question, hits, rank_of(hits, question), relevance)
        if question.answer:
            sentences = [s for s in _SENTENCES.split(question.answer.strip()) if s]
            answer_vectors = encode([question.answer, *sentences])
            scored.answer_relevance = float(np.dot(vector, answer_vectors[0]))
            if chunk_vectors:
                matrix = np.stack(chunk_vectors)
                scored.faithfulness = float(np.mean(np.max(answer_vectors[1:] @ matrix.T, axis=1)))
        out.append(scored)
    return out


def summary(results: Sequence[Scored], top_k: int) -> dict[str, float | int | None]:
    labelled = [r for r in results if r.question.source is not None]
    answered = [r for r in results if r.answer_relevance is not None]

    def avg(values: list[float]) -> float | None:
        return round(mean(values), 4) if values else None

    judged = [r.judge for r in results if r.judge]
    return {
        "questions": len(results),
        "hit@1": avg([1.0 if r.rank == 1 else 0.0 for r in labelled]),
        f"hit@{top_k}": avg([1.0 if r.rank is not None else 0.0 for r in labelled]),
        "context_relevance": avg([r.context_relevance for r in results]),
        "faithfulness": avg([r.faithfulness for r in answered if r.faithfulness is not None]),
        "answer_relevance": avg([r.answer_relevance for r in answered if r.answer_relevance is not None]),
        **{f"judge_{k}": avg([v for j in judged if isinstance(v := j.get(k), float)]) for k in JUDGED},
        "judge_unparsed": sum(1 for j in judged if j.get("unparsed")) if judged else None,
    }


def judge(results: Sequence[Scored], base_url: str, model: str, key_env: str | None, timeout_s: float = 60.0) -> None:
    """Ask an OpenAI-compatible chat model to score each result; fills `Scored.judge` (unparsed: 1.0)."""
    key = os.environ.get(key_env, "") if key_env else ""
    for result in results:
        context = "\n\n".join(f"[{n}] {h.chunk.text}" for n, h in enumerate(result.hits, start=1))
        prompt = JUDGE_PROMPT.format(question=result.question.question, context=context, answer=result.question.answer)
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        request = urllib.request.Request(
            base_url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
        result.judge = parse_judgement(answer["choices"][0]["message"].get("content") or "")


def parse_judgement(text: str) -> dict[str, float | None]:
    match = re.search(r"\{.*\}", text, re.S)
    try:
        data = json.loads(match.group(0)) if match else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not any(isinstance(data.get(k), int | float) for k in JUDGED):
        return {"unparsed": 1.0}
    return {k: float(v) if isinstance(v := data.get(k), int | float) else None for k in JUDGED}
