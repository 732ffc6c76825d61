"""The markdown report of `python -m bench.injection`: rates per rule, split, language and kind; the grid.

Split from bench/injection.py, which scores and tunes; this only renders what it computes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.injection import (
    CONTRASTS,
    ITEMS,
    MAX_LOOKALIKES_BLOCKED,
    MIN_ATTACKS_BLOCKED,
    NEAR_COPY_COSINE,
    NEAR_COPY_LEXICAL,
    SPLITS,
    THRESHOLDS,
    Figures,
    Item,
    Scored,
    Setting,
    blocked,
    detector,
    figures,
    load_items,
    near_copies,
    recommend,
    score_all,
    score_items,
)
from plugins.embedding_guard.trained import trained_contrast


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


def _copies(items: list[Item] | None = None) -> str:
    found = near_copies(items=items)
    if not found:
        return "none"
    return "; ".join(f"{item.split} {item.text[:40]!r} ~ {line[:40]!r}" for item, line, _, _ in found)


def _describe(setting: Setting) -> str:
    vote = "off" if setting.vote is None else f">= {setting.vote:+.2f}"
    window_vote = "any" if setting.window_vote is None else f">= {setting.window_vote:+.2f}"
    return (
        f"cosine >= {setting.near} and margin >= {setting.margin:+.2f} (near copy), or kNN vote {vote}, or cosine >= "
        f"{setting.threshold:.2f} and contrast >= {setting.contrast:.2f} (a long text and its sentence windows: >= "
        f"{max(setting.contrast, setting.window_contrast):.2f}, and kNN vote {window_vote}, the vote alone not "
        f"enough); non-Latin: n-gram "
        f"similarity >= "
        f"{setting.lexical_threshold:.2f} and margin >= {setting.lexical_margin:+.2f}, or contrast >= "
        f"{setting.contrast:.2f}"
    )


def render() -> str:
    scored = score_all()
    shipped, baseline = Setting(), recommend(scored, "margin")
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
        f"Shipped defaults: {_describe(shipped)}; the classifier is the preset's trained one "
        f"({'loaded' if trained_contrast('prompt_injection') is not None else 'MISSING'}"
        "), whose training data holds the tune split (not the test split): tune figures are optimistic. Its "
        "`contrast` and `window_contrast` were picked by cross-validation over the held-out files "
        "(bench/train_injection.py). Baseline, the nearest-example margin alone tuned on the tune split: cosine >= "
        f"{baseline.near}, margin >= {baseline.margin:+.2f}.",
        "",
        f"Near copies of preset lines among the labelled texts (n-gram similarity >= {NEAR_COPY_LEXICAL}, or cosine >= "
        f"{NEAR_COPY_COSINE} for Latin text): {_copies()}.",
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
    lines += [
        "",
        "By language, shipped defaults:",
        "",
        "| language | split | attacks blocked | look-alikes blocked | all benign blocked |",
        "|---|---|---|---|---|",
    ]
    for lang in sorted({s.item.lang for s in scored}):
        for split in SPLITS:
            f = figures(scored, split, shipped, lang=lang)
            lines.append(
                f"| {lang} | {split} | {_pct(f.attacks_blocked, f.attacks)} | "
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


def render_holdout(path: Path, misses: bool = False) -> str:
    """The shipped defaults on another labelled file (JSONL: text, attack, kind, lang; no split): nothing is tuned."""
    items = load_items(path, split="holdout")
    scored = score_items(items)
    shipped = Setting()
    guard = detector()
    attacks = sum(i.attack for i in items)
    lines = [
        f"### embedding_guard on {path.name}: shipped defaults, not tuned on this file",
        "",
        f"{len(items)} labelled texts: {attacks} attacks / {len(items) - attacks} benign. Preset: "
        f"{len(guard.examples.attacks)} attack and {len(guard.examples.benign)} benign examples. Target: >= "
        f"{100 * MIN_ATTACKS_BLOCKED:.0f}% of attacks blocked, <= {100 * MAX_LOOKALIKES_BLOCKED:.0f}% of look-alikes.",
        "",
        f"Shipped defaults: {_describe(shipped)}.",
        "",
        f"Near copies of preset lines among these texts: {_copies(items)}.",
        "",
        "| language | attacks blocked | look-alikes blocked | all benign blocked |",
        "|---|---|---|---|",
    ]
    for lang in ("", *sorted({i.lang for i in items})):
        f = figures(scored, "holdout", shipped, lang=lang)
        lines.append(
            f"| {lang or 'all'} | {_pct(f.attacks_blocked, f.attacks)} | "
            f"{_pct(f.lookalikes_blocked, f.lookalikes)} | {_pct(f.benign_blocked, f.benign)} |"
        )
    lines += ["", "By kind (blocked / texts):", "", "| kind | blocked |", "|---|---|"]
    for kind in sorted({i.kind for i in items}):
        f = figures(scored, "holdout", shipped, kind)
        lines.append(f"| {kind} | {f.attacks_blocked + f.benign_blocked}/{f.attacks + f.benign} |")
    if misses:
        wrong = [s for s in scored if blocked(s, shipped) != s.item.attack]
        lines += ["", f"Misjudged (attack passed, or benign blocked): {len(wrong) or 'none'}", ""]
        for s in wrong:
            label = "attack passed" if s.item.attack else "benign blocked"
            lines.append(f"- {label} ({s.item.kind}, {s.item.lang}): {s.item.text[:160]!r}")
    lines += ["", f"Latency per check (one text alone, model on CPU, this machine): {_latency(scored)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, help="also write the markdown table to this file")
    parser.add_argument(
        "--holdout",
        type=Path,
        metavar="FILE",
        help="score this labelled JSONL file (text, attack, kind, lang) with the shipped defaults instead",
    )
    parser.add_argument("--misses", action="store_true", help="with --holdout: also list the misjudged texts")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    text = render_holdout(args.holdout, args.misses) if args.holdout else render()
    sys.stdout.write(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    print(f"\n({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
