"""The fitted contrast kept on disk, so that a restart does not fit it again (0.7-3.6 s of Newton steps at start).

    fit_cached(attacks, benign, attack_texts, benign_texts, directory) -> Contrast | None

A file is named by a digest of everything the fit reads: the examples' vectors (so the model and its dtype), their
texts, the fit's parameters and the n-gram hashing; any change is a new name. A file that cannot be read, or does not
hold what a fit returns, counts as absent: the contrast is fitted again and the file replaced. Files are written to a
temporary name and renamed into place, so a reader never sees half a file, and two processes starting at once at
worst both fit. A cache that cannot be written is skipped with a warning: it only saves time. The 8 newest fits
are kept (`KEEP`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from plugins.embedding_guard import contrast
from plugins.embedding_guard.contrast import Contrast, Matrix, fit_contrast

log = logging.getLogger(__name__)
FORMAT = 2  # bump when the file layout or the fit changes in a way the parameters below do not show
KEEP = 8  # fits kept in the folder (about 1 MB each for the preset); older ones are removed after each write


def default_directory() -> Path:
    """$XDG_CACHE_HOME/llm-gateway/embedding_guard, or ~/.cache/llm-gateway/embedding_guard."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-gateway" / "embedding_guard"


def digest(
    attack_matrix: Matrix, benign_matrix: Matrix, attack_texts: Sequence[str], benign_texts: Sequence[str]
) -> str:
    """A name for one fit: its inputs and parameters, hashed."""
    h = hashlib.sha256()
    params = (FORMAT, contrast.L2, contrast.VECTOR_SCALE, contrast.STEPS, contrast.MAX_DUAL, contrast.GRAM_DIM)
    h.update(repr((params, contrast.GRAM_SIZES)).encode())
    for matrix in (attack_matrix, benign_matrix):
        array = np.ascontiguousarray(matrix, dtype=np.float32)
        h.update(repr(array.shape).encode())
        h.update(array.tobytes())
    for texts in (attack_texts, benign_texts):
        h.update(len(texts).to_bytes(8, "little"))
        for text in texts:
            data = text.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


# What reading a damaged or foreign .npz raises (a truncated one that still starts like a zip: BadZipFile).
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def read(path: Path, width: int, note: str = "") -> tuple[Contrast, str]:
    """The contrast stored at `path`, and the text stored under `note` beside it ("" when not asked for).

    Raises FileNotFoundError, one of READ_ERRORS, or ValueError when the shapes are not a fit's for `width`.
    """
    with np.load(path, allow_pickle=False) as stored:
        weights = np.asarray(stored["weights"], dtype=np.float32)
        bias = float(stored["bias"])
        grams = np.asarray(stored["gram_weights"], dtype=np.float32) if "gram_weights" in stored else None
        text = str(stored[note]) if note else ""
    if weights.shape != (width,) or (grams is not None and grams.shape != (contrast.GRAM_DIM,)):
        raise ValueError(f"unexpected shapes {weights.shape}, {None if grams is None else grams.shape}")
    return Contrast(weights, bias, grams), text


def load(path: Path, width: int) -> Contrast | None:
    """The contrast stored at `path`, or None when the file is missing, unreadable or not what a fit returns."""
    try:
        found, _ = read(path, width)
    except FileNotFoundError:
        return None
    except READ_ERRORS as exc:
        log.warning("embedding_guard: ignoring unreadable fit cache %s: %s", path, exc)
        return None
    return found


def store(path: Path, fitted: Contrast) -> None:
    """Write atomically (a temporary file renamed into place); a failure is logged and otherwise ignored."""
    bias = np.array(fitted.bias, dtype=np.float64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                if fitted.gram_weights is None:
                    np.savez(f, weights=fitted.weights, bias=bias)
                else:
                    np.savez(f, weights=fitted.weights, bias=bias, gram_weights=fitted.gram_weights)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        prune(path.parent, KEEP)
    except OSError as exc:
        log.warning("embedding_guard: cannot write fit cache %s: %s", path, exc)


def prune(directory: Path, keep: int) -> None:
    """Remove all but the `keep` most recently written fits: a policy whose examples change often leaves no trail."""
    fits = []
    for entry in directory.glob("*.npz"):
        try:
            fits.append((entry.stat().st_mtime, entry))
        except FileNotFoundError:  # another process pruned it first
            continue
    for _, stale in sorted(fits, reverse=True)[keep:]:
        stale.unlink(missing_ok=True)


def fit_cached(
    attack_matrix: Matrix,
    benign_matrix: Matrix,
    attack_texts: Sequence[str],
    benign_texts: Sequence[str],
    directory: Path,
) -> Contrast | None:
    """`fit_contrast` over the vectors and texts, read from `directory` when this very fit was stored there."""
    if attack_matrix.shape[0] == 0 or benign_matrix.shape[0] == 0:
        return None
    path = directory / f"{digest(attack_matrix, benign_matrix, attack_texts, benign_texts)}.npz"
    found = load(path, attack_matrix.shape[1])
    if found is not None:
        return found
    fitted = fit_contrast(attack_matrix, benign_matrix, attack_texts, benign_texts)
    if fitted is not None:
        store(path, fitted)
    return fitted
