"""The guard's decision, as pure functions over unit vectors: no model, no I/O.

    score(query, attacks, benign) -> Detection     nearest attack example, and its lead over the nearest benign one
    decide(detection, cfg) -> bool                 close enough to an attack, and closer to it than to anything benign
    windows(text, max_windows) -> [text, ...]      what to embed for one text: itself, and its sentences when long

Cosine similarity alone cannot tell "ignore all previous instructions" from "ignore whitespace in git diff"
well enough: a small model puts both near "ignore". The benign contrast set pulls the look-alike towards
its own kind, so a text is blocked only when the nearest attack beats the nearest benign example by a margin.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]

# A sentence ends at . ! ? (or their CJK forms) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])[\"')\]]*\s+|\s*\n+\s*")
MIN_SENTENCE_CHARS = 24  # shorter pieces ("Hi.", "1.") are joined to the next one: alone they match anything


@dataclass(frozen=True, slots=True)
class Detection:
    score: float  # cosine similarity to the nearest attack example
    nearest_example_index: int  # its row in the attack matrix (-1: no attack examples)
    margin: float  # score minus the similarity to the nearest benign example (inf without a benign set)


class Thresholds(Protocol):
    @property
    def threshold(self) -> float: ...

    @property
    def margin(self) -> float: ...


def score(query_vec: Matrix, attack_matrix: Matrix, benign_matrix: Matrix) -> Detection:
    """Similarity of one normalised query vector to the nearest attack and benign examples (rows, normalised)."""
    if attack_matrix.shape[0] == 0:
        return Detection(-1.0, -1, -math.inf)
    attack = attack_matrix @ query_vec
    nearest = int(np.argmax(attack))
    best = float(attack[nearest])
    benign = float(np.max(benign_matrix @ query_vec)) if benign_matrix.shape[0] else -math.inf
    return Detection(best, nearest, best - benign)


def decide(detection: Detection, cfg: Thresholds) -> bool:
    """True when the text should be treated as an attack."""
    return detection.score >= cfg.threshold and detection.margin >= cfg.margin


def strongest(detections: list[Detection], cfg: Thresholds) -> Detection | None:
    """The detection that decides for a set of texts: the strongest hit if any, else the highest score."""
    if not detections:
        return None
    hits = [d for d in detections if decide(d, cfg)]
    if hits:
        return max(hits, key=lambda d: (d.margin, d.score))
    return max(detections, key=lambda d: d.score)


def sentences(text: str) -> list[str]:
    """The text cut into sentences, each at least MIN_SENTENCE_CHARS long where the text allows."""
    out: list[str] = []
    carry = ""
    for piece in _SENTENCE_END.split(text):
        piece = f"{carry} {piece}".strip() if carry else piece.strip()
        if len(piece) < MIN_SENTENCE_CHARS:
            carry = piece
            continue
        out.append(piece)
        carry = ""
    if carry:
        if out:
            out[-1] = f"{out[-1]} {carry}"
        else:
            out.append(carry)
    return out


def windows(text: str, max_windows: int, long_chars: int = 160) -> list[str]:
    """The texts to embed for one text: the whole of it, plus its sentences when it is long.

    An attack sentence inside a long benign message is diluted in the whole-text embedding (and cut off
    past the model's 256 tokens); alone it stands out. Cost stays bounded: past `max_windows` sentences,
    neighbours are grouped into `max_windows` windows of about equal length, so every part of the text is
    looked at but each window is less sharp (and the model truncates each at 256 tokens).
    """
    text = text.strip()
    if not text:
        return []
    if len(text) <= long_chars or max_windows <= 0:
        return [text]
    parts = sentences(text)
    if len(parts) <= 1:
        return [text]
    if len(parts) > max_windows:
        size = math.ceil(len(parts) / max_windows)
        parts = [" ".join(parts[i : i + size]) for i in range(0, len(parts), size)]
    return [text, *parts]
