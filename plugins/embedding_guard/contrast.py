"""The fitted contrast: a logistic regression that tells the attack examples from the benign ones.

    word_grams(text) -> Grams                       hashed character 3- to 5-grams of each word
    fit_contrast(attacks, benign, ...) -> Contrast   fitted on the examples' vectors and, given their texts, n-grams
    Contrast.probability(vector, grams) -> float     attack probability of one text

Two kinds of evidence, one model. The sentence model's vector says what a text is about ("speaking to the
model about its own rules"); it reads English only, and blurs a wording it has not seen towards the nearest
topic. Hashed character n-grams of each word say which words and word pieces a text uses ("instruc",
"system prompt", "무시하고"): they read any script and keep the words that tell an attack from its
look-alike ("git", "whitespace" against "previous", "rules"), but know nothing of synonyms. A logistic
regression over both, fitted on the examples, weighs each against the other; on the tune split it ranks
attacks above look-alikes better than either alone (bench/injection.py).

The n-gram space is wide (2**18 buckets) and the examples are few (about a thousand), so the regression is
fitted in its dual (kernel) form: Newton's method over one coefficient per example, the kernel being the
sum of the vectors' and the n-grams' inner products. Deterministic; about 0.7 s for 1,405 examples on this
2-core machine when idle (the preset had 1,860: about 1 s idle, 6 s under load; it now has 2,108: 3.6-4.2 s on one
core with the other busy; the cost grows with the cube of the count), once at start, and kept on disk between starts
(fit_cache.py).
Past MAX_DUAL examples the cubic cost grows too large, and the contrast falls back to the model's vectors
alone, fitted in the primal.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.int64]

GRAM_DIM = 1 << 18
GRAM_SIZES = (3, 4, 5)
L2 = 1 / 30  # on the old preset, 1/10 to 1/100 ranked tune attacks over look-alikes about equally well
VECTOR_SCALE = 1.0  # the model's vectors against the n-grams (both unit length): 0.5 to 1.5 did about as well
STEPS = 30
MAX_DUAL = 3000  # examples: past this, the n x n Newton systems take seconds each

_WORD = re.compile(r"\w+")
# Obfuscations that keep the letters: "I g n o r e", "f.o.r.g.e.t", "R-e-v-e-a-l" and leetspeak ("1gn0r3").
_SPACED = re.compile(r"\b(?:\w[ .\-_*]){3,}\w\b")
_SPACERS = re.compile(r"[ .\-_*]")
_LEET_WORD = re.compile(r"\b(?=\w*[^\W\d_])(?=\w*\d)\w+")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t"})


@dataclass(frozen=True, slots=True)
class Grams:
    """One text's hashed n-grams: distinct buckets and their weights (log counts, unit length)."""

    indices: Indices
    values: Floats


def _pieces(folded: str) -> list[str]:
    # Numbers say nothing of intent, and a classifier fitted with them learned that "unique prompt 99 7733" looked like
    # an attack while "unique prompt 17 123456789" did not (p 0.76 against 0.25).
    padded = [f" {word} " for word in _WORD.findall(folded) if not word.isdigit()]
    return [w[i : i + n] for w in padded for n in GRAM_SIZES for i in range(len(w) - n + 1)]


def _plain(folded: str) -> str:
    """The text with letter-by-letter spacing closed up and digits in words read as letters."""
    joined = _SPACED.sub(lambda m: _SPACERS.sub("", m.group(0)), folded)
    return _LEET_WORD.sub(lambda m: m.group(0).translate(_LEET), joined)


def word_grams(text: str) -> Grams:
    """Character 3- to 5-grams of each word (NFKC, case folded, padded with spaces), of a de-obfuscated copy too."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    pieces = _pieces(folded)
    plain = _plain(folded)
    if plain != folded:
        pieces += _pieces(plain)
    if not pieces:
        return Grams(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
    hashes = np.array([zlib.crc32(p.encode("utf-8")) for p in pieces], dtype=np.int64)
    indices, counts = np.unique(hashes % GRAM_DIM, return_counts=True)
    values = np.log1p(counts.astype(np.float64))
    return Grams(indices, values / np.linalg.norm(values))


@dataclass(frozen=True, slots=True)
class Contrast:
    """Logistic regression weights over the model's vectors and (optionally) the hashed n-grams."""

    weights: Matrix
    bias: float
    gram_weights: Matrix | None = None  # None: fitted on the vectors alone

    def probability(self, vector: Matrix, grams: Grams | None = None) -> float:
        logit = float(vector @ self.weights) + self.bias
        if self.gram_weights is not None and grams is not None and grams.indices.size:
            logit += float(self.gram_weights[grams.indices] @ grams.values)
        return 1.0 / (1.0 + float(np.exp(-np.clip(logit, -30.0, 30.0))))


def fit_contrast(
    attack_matrix: Matrix,
    benign_matrix: Matrix,
    attack_texts: Sequence[str] | None = None,
    benign_texts: Sequence[str] | None = None,
    l2: float = L2,
) -> Contrast | None:
    """L2-regularised logistic regression, attack (1) against benign (0), each side weighted equally as a whole.

    With the texts (one per row), the n-grams join the vectors as features; without them, or past MAX_DUAL
    examples, the vectors alone are used. None without examples on both sides.
    """
    n_attack, n_benign = attack_matrix.shape[0], benign_matrix.shape[0]
    if n_attack == 0 or n_benign == 0:
        return None
    x = np.vstack([attack_matrix, benign_matrix]).astype(np.float64)
    y = np.concatenate([np.ones(n_attack), np.zeros(n_benign)])
    weight = np.where(y == 1, len(y) / (2 * n_attack), len(y) / (2 * n_benign))
    if len(y) > MAX_DUAL:
        return _fit_primal(x, y, weight, l2)
    kernel = VECTOR_SCALE**2 * (x @ x.T) + 1.0  # the constant carries the bias
    grams: list[Grams] = []
    if attack_texts is not None and benign_texts is not None:
        grams = [word_grams(text) for text in (*attack_texts, *benign_texts)]
        if len(grams) != len(y):
            raise ValueError("one text per example vector is needed")
        kernel += _gram_kernel(grams)
    coef = _fit_dual(kernel, y, weight, l2)
    gram_weights = None
    if grams:
        rows = np.repeat(coef, [g.indices.size for g in grams])
        columns = np.concatenate([g.indices for g in grams])
        values = np.concatenate([g.values for g in grams])
        gram_weights = np.bincount(columns, weights=values * rows, minlength=GRAM_DIM).astype(np.float32)
    return Contrast((VECTOR_SCALE**2 * (x.T @ coef)).astype(np.float32), float(coef.sum()), gram_weights)


def _fit_dual(kernel: Floats, y: Floats, weight: Floats, l2: float) -> Floats:
    """Coefficients a of f = K a minimising sum(weight * logloss(y, f)) + l2/2 a'Ka, by Newton's method.

    The Newton system K (D K + l2 I) step = K (g + l2 a) is solved as (D K + l2 I) step = g + l2 a.
    """
    coef = np.zeros(len(y))
    identity = np.eye(len(y))
    for _ in range(STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(kernel @ coef, -30.0, 30.0)))
        gradient = weight * (p - y) + l2 * coef
        curvature = weight * p * (1 - p)
        step = np.linalg.solve(curvature[:, None] * kernel + l2 * identity, gradient)
        coef -= step
        if float(np.max(np.abs(kernel @ step))) < 1e-6:
            break
    return coef


def _fit_primal(x: Floats, y: Floats, weight: Floats, l2: float) -> Contrast:
    """The same regression on the vectors alone, by Newton's method over their dimensions (for many examples)."""
    x = np.hstack([x, np.ones((x.shape[0], 1))])
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    w = np.zeros(x.shape[1])
    for _ in range(STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30.0, 30.0)))
        gradient = x.T @ (weight * (p - y)) + penalty * w
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.max(np.abs(step))) < 1e-6:
            break
    return Contrast(w[:-1].astype(np.float32), float(w[-1]))


def _gram_kernel(grams: Sequence[Grams]) -> Floats:
    """The n x n inner products of the texts' n-gram vectors, through an inverted index of the buckets."""
    n = len(grams)
    kernel = np.zeros((n, n))
    if not any(g.indices.size for g in grams):
        return kernel
    rows = np.repeat(np.arange(n), [g.indices.size for g in grams])
    columns = np.concatenate([g.indices for g in grams])
    values = np.concatenate([g.values for g in grams])
    order = np.argsort(columns, kind="stable")
    rows, columns, values = rows[order], columns[order], values[order]
    buckets, starts, counts = np.unique(columns, return_index=True, return_counts=True)
    for i, g in enumerate(grams):
        if not g.indices.size:
            continue
        at = np.searchsorted(buckets, g.indices)
        begin, size = starts[at], counts[at]
        take = np.repeat(begin - np.cumsum(size) + size, size) + np.arange(int(size.sum()))
        kernel[i] = np.bincount(rows[take], weights=values[take] * np.repeat(g.values, size), minlength=n)
    return kernel
