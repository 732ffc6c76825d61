"""The example sets as matrices, and one check of a set of texts against them (sync, no I/O).

The plugin and the benchmark share this: they differ only in how the vectors are computed (the batched
`Embedder` off the event loop, or the model called directly). Every unit is embedded, whatever its view:
the contrast reads the model's vector and the n-grams of any text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from plugins.embedding_guard.contrast import Contrast, fit_contrast, word_grams
from plugins.embedding_guard.detect import (
    LEXICAL_DIM,
    Detection,
    Matrix,
    View,
    addressed,
    lexical_vector,
    mostly_non_latin,
    score,
    unmasked,
    windows,
)
from plugins.embedding_guard.examples import ExampleSet
from plugins.embedding_guard.fit_cache import fit_cached

NonLatin = Literal["lexical", "semantic"]


@dataclass(frozen=True, slots=True)
class Unit:
    """One piece of text to compare: a whole text or one of its sentence windows."""

    text: str
    view: View
    window: bool = False  # part of a long text: the whole of it, or one of its sentence windows
    addressed: bool = False  # a short text or sentence window (not a long text's whole) that speaks to an AI reader


def _lexical_rows(texts: Sequence[str]) -> tuple[Matrix, npt.NDArray[np.intp]]:
    rows = [i for i, text in enumerate(texts) if mostly_non_latin(text)]
    matrix = np.zeros((len(rows), LEXICAL_DIM), dtype=np.float32)
    for out, i in enumerate(rows):
        matrix[out] = lexical_vector(texts[i])
    return matrix, np.asarray(rows, dtype=np.intp)


class Detector:
    """Attack and benign examples, embedded once, and their contrast; `check` scores texts against them."""

    def __init__(
        self,
        examples: ExampleSet,
        attack_vectors: Matrix,
        benign_vectors: Matrix,
        fit_cache: Path | None = None,
        trained: Contrast | None = None,
    ) -> None:
        """`fit_cache`: a folder where the fitted contrast is kept between starts (None: fit every time).
        `trained`: a contrast trained beforehand for these examples (trained.py), used instead of fitting one."""
        self.examples = examples
        self.attacks = np.ascontiguousarray(attack_vectors, dtype=np.float32)
        self.benign = np.ascontiguousarray(benign_vectors, dtype=np.float32).reshape(-1, self.attacks.shape[1])
        self.contrast: Contrast | None
        if trained is not None:
            self.contrast = trained
        elif fit_cache is None:
            self.contrast = fit_contrast(self.attacks, self.benign, examples.attacks, examples.benign)
        else:
            self.contrast = fit_cached(self.attacks, self.benign, examples.attacks, examples.benign, fit_cache)
        self._reads_grams = self.contrast is not None and self.contrast.gram_weights is not None
        # Only non-Latin examples can be near a non-Latin text by n-grams; the rest are left out of that view.
        self.lexical_attacks, self._lexical_rows = _lexical_rows(examples.attacks)
        self.lexical_benign, _ = _lexical_rows(examples.benign)

    def units(self, texts: Sequence[str], max_windows: int, non_latin: NonLatin = "lexical") -> list[Unit]:
        """What to embed and score: each text (with invisible and look-alike letters undone) and its sentences.

        A text cut into sentence windows is long: it and its windows are all marked `window` (see `decide`). A short
        text or sentence window that speaks to an AI reader is marked `addressed`; the whole of a long text is not
        (its vector is the document's, not the one sentence's).
        """
        lexical = non_latin == "lexical" and self.lexical_attacks.shape[0] > 0
        out: list[Unit] = []
        for text in texts:
            pieces = windows(unmasked(text), max_windows)
            long = len(pieces) > 1
            for i, piece in enumerate(pieces):
                view: View = "lexical" if lexical and mostly_non_latin(piece) else "semantic"
                out.append(Unit(piece, view, long, (i > 0 or not long) and addressed(piece)))
        return out

    def check(self, units: Sequence[Unit], vectors: Sequence[Matrix]) -> list[Detection]:
        """One detection per unit, given the model's vector of each unit, in order."""
        if len(vectors) != len(units):
            raise ValueError(f"{len(units)} units but {len(vectors)} vectors")
        out: list[Detection] = []
        for unit, vector in zip(units, vectors, strict=True):
            grams = word_grams(unit.text) if self._reads_grams else None
            if unit.view == "semantic":
                found = score(vector, self.attacks, self.benign, contrast=self.contrast, grams=grams)
                out.append(replace(found, window=unit.window, addressed=unit.addressed))
                continue
            found = score(lexical_vector(unit.text), self.lexical_attacks, self.lexical_benign, "lexical")
            index = found.nearest_example_index
            if index >= 0:  # back to the row in the whole attack set
                index = int(self._lexical_rows[index])
            likelihood = self.contrast.probability(vector, grams) if self.contrast is not None else 0.0
            out.append(
                Detection(
                    found.score,
                    index,
                    found.margin,
                    "lexical",
                    likelihood,
                    window=unit.window,
                    addressed=unit.addressed,
                )
            )
        return out

    def describe(self, detection: Detection) -> tuple[str, str]:
        """(rule, example) for logs: where the nearest attack example comes from, and its text."""
        index = detection.nearest_example_index
        if index < 0:
            return "none", ""
        return self.examples.labels[index], self.examples.attacks[index]
