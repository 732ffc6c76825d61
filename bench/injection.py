"""`python -m bench.injection [--output FILE]`: how well embedding_guard's prompt_injection preset separates attacks.

Each item of tests/plugins/injection_eval.jsonl is a text labelled ``attack: true`` (injections and jailbreaks worded
differently from the preset), or a benign one: a *look-alike* (kind ``lookalike*``: "ignore whitespace in git diff",
"act as a translator") or an ordinary question. Each text goes through the plugin's own path (`Detector.units`:
the text and, when long, its sentences; non-Latin texts by n-grams; the model for the rest; `decide` on the
strongest unit), against the preset embedded with the packaged all-MiniLM-L6-v2.

The split was fixed before any tuning. ``recommend()`` picks the shipped defaults on the tune split only: the most
attacks blocked with at most MAX_TUNE_LOOKALIKE of the look-alikes blocked, then the fewest benign texts blocked,
then the highest thresholds. It searches the contrast rule (cosine floor + fitted contrast, no margin);
``recommend(family="margin")`` searches the nearest-example margin rule instead, shown as the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from plugins.embedding_guard import config as defaults
from plugins.embedding_guard.detect import Detection, Matrix, decide, strongest
from plugins.embedding_guard.detector import Detector, Unit
from plugins.embedding_guard.examples import collect

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

ITEMS = Path(__file__).resolve().parent.parent / "tests" / "plugins" / "injection_eval.jsonl"
SPLITS = ("tune", "test")
MIN_ATTACKS_BLOCKED = 0.90  # the product target, on the test split...
MAX_LOOKALIKES_BLOCKED = 0.10  # ...and at most this share of benign look-alikes blocked
MAX_TUNE_LOOKALIKE = 0.05  # tuning asks for more headroom than the target
MAX_WINDOWS = 16
THRESHOLDS = (0.0, 0.10, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
CONTRASTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MARGINS = (-0.04, -0.02, 0.0, 0.02, 0.04, 0.06, 0.08, 0.10)  # the baseline: nearest-example margin, no contrast
LEXICAL_THRESHOLDS = (0.15, 0.20, 0.25, 0.30, 0.35)
LEXICAL_MARGINS = (0.0, 0.05, 0.10, 0.15)


@dataclass(frozen=True, slots=True)
class Item:
    text: str
    attack: bool
    split: str
    kind: str
    lang: str = "en"

    @property
    def lookalike(self) -> bool:
        return not self.attack and self.kind.startswith("lookalike")


@dataclass(frozen=True, slots=True)
class Setting:
    threshold: float = defaults.DEFAULT_THRESHOLD
    contrast: float = defaults.DEFAULT_CONTRAST
    near: float | None = defaults.DEFAULT_NEAR
    margin: float = defaults.DEFAULT_MARGIN
    lexical_threshold: float = defaults.DEFAULT_LEXICAL_THRESHOLD
    lexical_margin: float = defaults.DEFAULT_LEXICAL_MARGIN


@dataclass(frozen=True, slots=True)
class Scored:
    item: Item
    units: tuple[Unit, ...]
    detections: tuple[Detection, ...]
    seconds: float  # one check alone: windows, embedding, scoring


@dataclass(frozen=True, slots=True)
class Figures:
    attacks_blocked: int
    attacks: int
    lookalikes_blocked: int
    lookalikes: int
    benign_blocked: int
    benign: int

    @staticmethod
    def rate(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    @property
    def attack_rate(self) -> float:
        return self.rate(self.attacks_blocked, self.attacks)

    @property
    def lookalike_rate(self) -> float:
        return self.rate(self.lookalikes_blocked, self.lookalikes)

    @property
    def benign_rate(self) -> float:
        return self.rate(self.benign_blocked, self.benign)


def load_items(path: Path = ITEMS) -> list[Item]:
    with path.open(encoding="utf-8") as f:
        return [Item(**json.loads(line)) for line in f if line.strip()]


@lru_cache(maxsize=1)
def load_model() -> SentenceTransformer:
    """The packaged all-MiniLM-L6-v2, offline (never downloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gateway.embeddings import load_model as load

    model: SentenceTransformer = load(None)
    return model


def encode(texts: list[str]) -> Matrix:
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = load_model().encode(texts, normalize_embeddings=True, batch_size=64, convert_to_numpy=True)
    return np.ascontiguousarray(vectors, dtype=np.float32)


@lru_cache(maxsize=1)
def detector() -> Detector:
    examples = collect(preset="prompt_injection")
    return Detector(examples, encode(list(examples.attacks)), encode(list(examples.benign)))


def check(text: str) -> tuple[tuple[Unit, ...], tuple[Detection, ...]]:
    """What the plugin does for one text, with the model called directly instead of the batching Embedder."""
    guard = detector()
    units = guard.units([text], MAX_WINDOWS)
    vectors = encode([u.text for u in units if u.view == "semantic"])
    return tuple(units), tuple(guard.check(units, list(vectors)))


@lru_cache(maxsize=1)
def score_all() -> tuple[Scored, ...]:
    detector()
    check("warm up")
    out = []
    for item in load_items():
        start = time.perf_counter()
        units, detections = check(item.text)
        out.append(Scored(item, units, detections, time.perf_counter() - start))
    return tuple(out)


def blocked(scored: Scored, setting: Setting) -> bool:
    return any(decide(d, setting) for d in scored.detections)


@dataclass(frozen=True, slots=True)
class _Table:
    """The detections of some items as flat arrays, so a setting is judged on all of them at once."""

    items: tuple[Item, ...]
    owner: npt.NDArray[np.intp]  # the item of each unit
    lexical: npt.NDArray[np.bool_]
    score: npt.NDArray[np.float64]
    margin: npt.NDArray[np.float64]
    likelihood: npt.NDArray[np.float64]

    def blocked(self, setting: Setting) -> npt.NDArray[np.bool_]:
        semantic = (self.score >= setting.threshold) & (self.likelihood >= setting.contrast)
        if setting.near is not None:
            semantic |= (self.score >= setting.near) & (self.margin >= setting.margin)
        lexical = (self.score >= setting.lexical_threshold) & (self.margin >= setting.lexical_margin)
        hit = np.where(self.lexical, lexical, semantic)
        out = np.zeros(len(self.items), dtype=bool)
        np.logical_or.at(out, self.owner, hit)
        return out


def _table(scored: tuple[Scored, ...], split: str, kind: str) -> _Table:
    rows = [s for s in scored if s.item.split == split and (not kind or s.item.kind == kind)]
    units = [(n, d) for n, s in enumerate(rows) for d in s.detections]
    return _Table(
        tuple(s.item for s in rows),
        np.array([n for n, _ in units], dtype=np.intp),
        np.array([d.view == "lexical" for _, d in units], dtype=bool),
        np.array([d.score for _, d in units], dtype=np.float64),
        np.array([d.margin for _, d in units], dtype=np.float64),
        np.array([d.likelihood for _, d in units], dtype=np.float64),
    )


_tables: dict[tuple[int, str, str], _Table] = {}


def figures(scored: tuple[Scored, ...], split: str, setting: Setting, kind: str = "") -> Figures:
    key = (id(scored), split, kind)
    if key not in _tables:
        _tables[key] = _table(scored, split, kind)
    table = _tables[key]
    hits = list(zip(table.items, table.blocked(setting).tolist(), strict=True))
    return Figures(
        attacks_blocked=sum(b for i, b in hits if i.attack),
        attacks=sum(i.attack for i, _ in hits),
        lookalikes_blocked=sum(b for i, b in hits if i.lookalike),
        lookalikes=sum(i.lookalike for i, _ in hits),
        benign_blocked=sum(b for i, b in hits if not i.attack),
        benign=sum(not i.attack for i, _ in hits),
    )


def recommend(scored: tuple[Scored, ...] | None = None, family: str = "contrast") -> Setting:
    """The setting chosen on the tune split only (see the module docstring).

    family "contrast" (shipped): threshold and contrast searched, the near-copy rule at its fixed defaults.
    family "margin" (the baseline): the nearest-example rule alone, its cosine and margin searched.
    """
    scored = scored if scored is not None else score_all()
    if family == "contrast":
        semantic = [Setting(threshold=t, contrast=c) for t in THRESHOLDS for c in CONTRASTS]
    else:  # no contrast arm: a cosine above 1 is never reached
        semantic = [Setting(threshold=2.0, contrast=1.0, near=t, margin=m) for t in THRESHOLDS for m in MARGINS]
    candidates = []
    for base, lexical_threshold, lexical_margin in itertools.product(semantic, LEXICAL_THRESHOLDS, LEXICAL_MARGINS):
        setting = replace(base, lexical_threshold=lexical_threshold, lexical_margin=lexical_margin)
        f = figures(scored, "tune", setting)
        if f.lookalike_rate <= MAX_TUNE_LOOKALIKE:
            safety = (setting.contrast, setting.margin, setting.threshold, setting.near or 0.0)
            rank = (f.attack_rate, -f.benign_rate, *safety, lexical_margin, lexical_threshold)
            candidates.append((rank, setting))
    if not candidates:
        raise RuntimeError("no setting keeps look-alikes within the tune target")
    return max(candidates, key=lambda c: c[0])[1]


def _pct(part: int, whole: int) -> str:
    return f"{100 * Figures.rate(part, whole):.1f}% ({part}/{whole})"


def _latency(scored: tuple[Scored, ...]) -> str:
    parts = []
    for label, rows in (
        ("short texts (one unit)", [s for s in scored if len(s.units) == 1]),
        ("long texts (with sentence windows)", [s for s in scored if len(s.units) > 1]),
    ):
        if rows:
            ms = np.array([s.seconds * 1000 for s in rows])
            units = np.mean([len(s.units) for s in rows])
            parts.append(
                f"{label}: median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms "
                f"({len(rows)} texts, {units:.1f} units each)"
            )
    return "; ".join(parts)


def _describe(setting: Setting) -> str:
    return (
        f"cosine >= {setting.near} and margin >= {setting.margin:+.2f} (near copy), or cosine >= "
        f"{setting.threshold:.2f} and contrast >= {setting.contrast:.2f}; non-Latin: n-gram similarity >= "
        f"{setting.lexical_threshold:.2f}, margin >= {setting.lexical_margin:+.2f}"
    )


def report() -> str:
    scored = score_all()
    shipped, chosen, baseline = Setting(), recommend(scored), recommend(scored, "margin")
    counts = Counter((s.item.split, s.item.attack) for s in scored)
    guard = detector()
    lines = [
        "### embedding_guard: prompt_injection preset (all-MiniLM-L6-v2, n-grams for non-Latin text)",
        "",
        f"{len(scored)} labelled texts ({ITEMS.name}); tune: {counts['tune', True]} attacks / {counts['tune', False]} "
        f"benign, test: {counts['test', True]} / {counts['test', False]}. Preset: {len(guard.examples.attacks)} attack "
        f"and {len(guard.examples.benign)} benign examples. Target on the test split: >= "
        f"{100 * MIN_ATTACKS_BLOCKED:.0f}% of attacks blocked, <= {100 * MAX_LOOKALIKES_BLOCKED:.0f}% of look-alikes.",
        "",
        f"Shipped defaults: {_describe(shipped)}. recommend() on the tune split "
        f"{'agrees' if chosen == shipped else 'DIFFERS: ' + _describe(chosen)}. Baseline, the nearest-example margin "
        f"alone tuned the same way: cosine >= {baseline.near}, margin >= {baseline.margin:+.2f}.",
        "",
        "| rule | split | attacks blocked | look-alikes blocked | all benign blocked |",
        "|---|---|---|---|---|",
    ]
    for name, setting in (("shipped", shipped), ("baseline (margin only)", baseline)):
        for split in SPLITS:
            f = figures(scored, split, setting)
            lines.append(
                f"| {name} | {split} | {_pct(f.attacks_blocked, f.attacks)} | "
                f"{_pct(f.lookalikes_blocked, f.lookalikes)} | {_pct(f.benign_blocked, f.benign)} |"
            )
    lines += ["", "By kind, shipped defaults (blocked / texts):", "", "| kind | tune | test |", "|---|---|---|"]
    for kind in sorted({s.item.kind for s in scored}):
        cells = []
        for split in SPLITS:
            f = figures(scored, split, shipped, kind)
            cells.append(f"{f.attacks_blocked + f.benign_blocked}/{f.attacks + f.benign}")
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    lines += [
        "",
        "Cosine floor x contrast, near-copy and non-Latin rules at their defaults: attacks blocked - look-alikes "
        "blocked, % (tune / test).",
        "",
        "| threshold | " + " | ".join(f"contrast {c:.1f}" for c in CONTRASTS) + " |",
        "|---|" + "---|" * len(CONTRASTS),
    ]
    for threshold in THRESHOLDS:
        cells = []
        for contrast in CONTRASTS:
            setting = replace(shipped, threshold=threshold, contrast=contrast)
            tune, test = (figures(scored, split, setting) for split in SPLITS)
            cell = (
                f"{100 * tune.attack_rate:.0f}-{100 * tune.lookalike_rate:.0f} / "
                f"{100 * test.attack_rate:.0f}-{100 * test.lookalike_rate:.0f}"
            )
            cells.append(f"**{cell}**" if setting == shipped else cell)
        lines.append(f"| {threshold:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"Latency per check (one text alone, model on CPU, this machine): {_latency(scored)}."]
    return "\n".join(lines) + "\n"


def misjudged(split: str, setting: Setting | None = None) -> list[tuple[Item, Detection]]:
    """The items of a split that the setting gets wrong, with their deciding detection (for inspection)."""
    setting = setting or Setting()
    out = []
    for s in score_all():
        if s.item.split == split and blocked(s, setting) != s.item.attack:
            found = strongest(list(s.detections), setting)
            if found is not None:
                out.append((s.item, found))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    text = report()
    sys.stdout.write(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    print(f"\n({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
