"""A preset's trained classifier: the contrast fitted offline on public labelled sets, the preset and the dev files.

    preset_digest(preset) -> str                 what the classifier was trained with: the preset's two files, hashed
    trained_contrast(preset) -> Contrast | None  the shipped classifier, if it was trained on the preset as it is now

The contrast a policy fits at start (contrast.py) sees only its examples: about 2,100 lines for the preset. The shipped
one (`presets/<preset>.model.npz`, written by `python -m bench.train_injection`) has the same form, logistic
regression weights over the model's vector and the words' n-grams, fitted on about 22,000 public labelled texts as
well (docs/guards.md lists them and their licences). It is used only where it fits: the preset alone, with the
packaged model (see plugin.py). A file trained on other preset lines than the ones shipped is not used (with a
warning): the fit at start takes over.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from plugins.embedding_guard import fit_cache
from plugins.embedding_guard.contrast import Contrast
from plugins.embedding_guard.examples import PRESETS, Preset, preset_files

log = logging.getLogger(__name__)
WIDTH = 384  # all-MiniLM-L6-v2's vectors


def model_file(preset: Preset) -> Path:
    return PRESETS / f"{preset}.model.npz"


def preset_digest(preset: Preset) -> str:
    h = hashlib.sha256()
    for path in preset_files(preset):
        data = path.read_bytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def save(path: Path, fitted: Contrast, digest: str) -> None:
    if fitted.gram_weights is None:
        raise ValueError("a trained contrast reads the n-grams too")
    np.savez_compressed(
        path,
        weights=fitted.weights.astype(np.float32),
        bias=np.array(fitted.bias, dtype=np.float64),
        gram_weights=fitted.gram_weights.astype(np.float32),
        preset_digest=np.array(digest),
    )


def load(path: Path) -> tuple[Contrast, str]:
    """The contrast in `path` and the digest of the preset it was trained with. Raises on a missing or bad file."""
    fitted, digest = fit_cache.read(path, WIDTH, note="preset_digest")
    if fitted.gram_weights is None:
        raise ValueError(f"{path}: no n-gram weights")
    return fitted, digest


def trained_contrast(preset: Preset, path: Path | None = None) -> Contrast | None:
    """The preset's shipped classifier (or the one at `path`); None, with a warning, when it is unreadable or was
    trained on other lines than the preset's current ones."""
    path = model_file(preset) if path is None else path
    try:
        fitted, digest = load(path)
    except FileNotFoundError:
        return None
    except fit_cache.READ_ERRORS as exc:
        log.warning("embedding_guard: ignoring the trained classifier %s: %s", path, exc)
        return None
    if digest != preset_digest(preset):
        log.warning(
            "embedding_guard: %s was trained on other %s lines than the shipped ones; fitting on the examples "
            "instead (retrain: make train-injection)",
            path.name,
            preset,
        )
        return None
    return fitted
