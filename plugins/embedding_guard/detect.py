"""The guard's decision, as pure functions over unit vectors: no model, no I/O.

    score(query, attacks, benign) -> Detection   nearest attack example, its lead over the nearest benign one,
                                                 the lead of the KNN nearest attacks over the KNN nearest benign
                                                 ones, and (given a Contrast) the attack probability
    decide(detection, cfg) -> bool               a near copy of an attack, a kNN vote for the attacks (short texts),
                                                 or on the attack side of the contrast
    windows(text, max_windows) -> [text, ...]    what to embed for one text: itself, and its sentences when long
    unmasked(text)                               the text without invisible characters and look-alike letters
    addressed(text)                              True when the text speaks to an AI reader ("Note to the AI: ...")
    lexical_vector(text)                         hashed character n-grams, for scripts the model cannot read

Cosine similarity alone cannot tell "ignore all previous instructions" from "ignore whitespace in git diff"
well enough: a small model puts both near "ignore". A benign contrast set helps twice: the nearest attack
must beat the nearest benign example by a margin, and a classifier fitted on both sets (contrast.py: the
model's vectors and the words' n-grams) says which side of the line between them a new wording falls on.
The nearest single example is a noisy witness (one lucky benign line outvotes a dozen attack lines just
behind it); the mean of the KNN nearest on each side is a steadier one.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from plugins.embedding_guard.contrast import Contrast, Grams
from plugins.embedding_guard.contrast import Matrix as Matrix

View = Literal["semantic", "lexical"]
LEXICAL_DIM = 1 << 14
LEXICAL_NGRAMS = (2, 3)

# A sentence ends at . ! ? (or their CJK forms: \u3002 \uff01 \uff1f) followed by space, or at a line break.
_MARKS = r".!?\u3002\uff01\uff1f"
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[\u3002\uff01\uff1f])\s*|\s*\n+\s*")
_SENTENCE_DONE = re.compile(rf"[{_MARKS}][\"')\]]*(?:\s|$)|\n")
MIN_SENTENCE_CHARS = 24  # shorter pieces ("Hi.", "1.") are joined to the next one: alone they match anything
# Characters that hide a Latin word from the model and the n-grams while it reads the same to a person: invisible
# ones inside it ("Ig\u200bnore"), and Cyrillic or Greek letters that look like Latin ones mixed into it
# ("\u0406gn\u043er\u0435": I, o and e are Cyrillic).
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]")
_LOOKALIKES = dict(
    zip(
        "аеорсухіјѕԁһӏАВЕКМНОРСТХУІЈЅαορνικΑΒΕΖΗΙΚΜΝΟΡΤΧΥ",
        "aeopcyxijsdhlABEKMHOPCTXYIJSaopvikABEZHIKMNOPTXY",
        strict=True,
    )
)
_UNMASK = str.maketrans(_LOOKALIKES)
_WORD = re.compile(r"\w+")
# A sentence that speaks to an AI reader: what makes a hidden or indirect injection one. Its nouns (AI, LLM, assistant,
# agent, bot, model, summariser, ...), optionally qualified ("AI shopping assistants", "code reviewer"), in one of five
# frames: "note/message/instruction to/for (the/any) NOUN", "if/when you are an NOUN", "(the/any/whatever) NOUN
# reading/processing/summarizing this ...", a vocative at the start of a sentence, tag or comment ("AI reviewer:",
# "<!-- Summarizer:", "hey bot,"), and "any/all NOUN(s) must/should ..." (not "must not": a policy's rule).
_AI = (
    r"(?:ai|a\.i\.|llms?|gpts?|chatgpt|claude|gemini|copilot|chatbots?|bots?|language\s+models?|models?|assistants?"
    r"|agents?|summari[sz]ers?|reviewers?|screening\s+(?:tools?|systems?)|note-?takers?|translators?|crawlers?"
    r"|scrapers?|automated\s+(?:readers?|systems?|tools?)|systems?)"
)
_AI_QUALIFIED = (
    r"(?:(?:ai|llm|automated|language|support|shopping|coding|code|email|writing|research|browsing|hr|recruiting"
    r"|translation|summari[sz]ation|review|screening)[\s-]+){0,3}" + _AI
)
_ADDRESS = re.compile(
    rf"\b(?:note|message|instructions?|directive|reminder|memo|command|request|p\.?s\.?)\s+(?:to|for)\s+"
    rf"(?:the\s+|any\s+|all\s+|every\s+)?{_AI_QUALIFIED}\b"
    rf"|\b(?:if|when)\s+you\s+are\s+(?:an?\s+|the\s+)?{_AI_QUALIFIED}\b"
    rf"|(?:\b(?:you|the|any|all|every)\s+{_AI_QUALIFIED}\s+(?:that\s+(?:is|are)\s+)?"
    rf"|\b(?:whatever|whichever|any)\s+{_AI_QUALIFIED}\s+(?:(?:is|are)\s+)?)"
    r"(?:reading|processing|summari[sz]ing|reviewing|translating|generating|indexing|parsing|analy[sz]ing|screening"
    r"|handling|opening|seeing|ingesting|crawling)\b"
    rf"|(?:^|[\[(<{{\"'>*#/\-\u2014]\s*|\b(?:hey|dear|attention|attn|to|psst)\s+)(?:any\s+|all\s+|the\s+|dear\s+)?"
    rf"{_AI_QUALIFIED}\s*(?::|,|\u2014|--)\s"
    rf"|\b(?:any|all|every)\s+{_AI_QUALIFIED}\s+(?:must|should|shall|need\s+to|are\s+required\s+to"
    r"|is\s+required\s+to|are\s+instructed\s+to)\s+(?!not\b)",
    re.IGNORECASE,
)
KNN = 3  # examples per side in the vote: on the tune split 3 ranks attacks over look-alikes best (1, 3, 5, 10 tried)


@dataclass(frozen=True, slots=True)
class Detection:
    score: float  # cosine similarity to the nearest attack example
    nearest_example_index: int  # its row in the attack matrix (-1: no attack examples)
    margin: float  # score minus the similarity to the nearest benign example (inf without a benign set)
    view: View = "semantic"  # which vectors were compared: the model's, or character n-grams
    likelihood: float = 0.0  # attack probability of the fitted attack/benign classifier (0.0 without one)
    # Mean similarity of the KNN nearest attack examples minus that of the KNN nearest benign (-inf without benign).
    vote: float = -math.inf
    window: bool = False  # a long text or one of its sentence windows: judged by `window_contrast`, not the vote alone
    addressed: bool = False  # a short text or sentence window that speaks to an AI reader: judged by `address_contrast`


class Thresholds(Protocol):
    @property
    def threshold(self) -> float: ...

    @property
    def contrast(self) -> float: ...

    @property
    def window_contrast(self) -> float: ...

    @property
    def window_vote(self) -> float | None: ...

    @property
    def address_contrast(self) -> float | None: ...

    @property
    def near(self) -> float | None: ...

    @property
    def margin(self) -> float: ...

    @property
    def vote(self) -> float | None: ...

    @property
    def lexical_threshold(self) -> float: ...

    @property
    def lexical_margin(self) -> float: ...


def score(
    query_vec: Matrix,
    attack_matrix: Matrix,
    benign_matrix: Matrix,
    view: View = "semantic",
    contrast: Contrast | None = None,
    grams: Grams | None = None,
) -> Detection:
    """Similarity of one normalised query vector to the nearest attack and benign examples (rows, normalised).

    The contrast, if given, reads the same vector (and the text's n-grams, if given): the semantic view only.
    """
    if attack_matrix.shape[0] == 0:
        return Detection(-1.0, -1, -math.inf, view, 0.0)
    attack = attack_matrix @ query_vec
    nearest = int(np.argmax(attack))
    best = float(attack[nearest])
    likelihood = contrast.probability(query_vec, grams) if contrast is not None else 0.0
    if not benign_matrix.shape[0]:
        return Detection(best, nearest, math.inf, view, likelihood)  # no vote without a benign side
    benign = benign_matrix @ query_vec
    vote = _top_mean(attack, KNN) - _top_mean(benign, KNN)
    return Detection(best, nearest, best - float(np.max(benign)), view, likelihood, vote)


def _top_mean(similarities: Matrix, k: int) -> float:
    if similarities.shape[0] <= k:
        return float(np.mean(similarities))
    return float(np.mean(np.partition(similarities, -k)[-k:]))


def decide(detection: Detection, cfg: Thresholds) -> bool:
    """True when the text should be treated as an attack.

    Semantic view, any of three ways: a near copy of a known attack (cosine >= `near`, and nearer it than
    any benign example by `margin`); nearer the attack examples than the benign ones by `vote`, averaged
    over the KNN nearest of each; or a new wording on the attack side of the fitted contrast
    (likelihood >= `contrast`) that is still somewhat like an attack example (cosine >= `threshold`).
    Lexical view: n-gram similarity >= `lexical_threshold`, with a lead of `lexical_margin` over benign; or
    on the attack side of the contrast (no cosine floor: the model's similarities say little there).
    A long text (the whole of it and each of its sentence windows) must reach `window_contrast` instead of
    `contrast` (the higher of the two), with a kNN vote of at least `window_vote`, and the kNN vote alone does not
    block it: a document about security, rules or passwords has a dozen sentences that each get a chance to look
    like an attack ("send the reset link to the email on file only" sits among the attack examples about email
    tools), and its whole-text vector is the average of such sentences, while an injection hidden in it is a
    sentence addressed to the model, which the contrast reads as near certain and whose nearest examples are
    attacks. Near copies of an attack example are blocked wherever they are.
    A short text or sentence window that speaks to an AI reader ("Note to the AI summarizing this: ...", see
    `addressed`) needs only `address_contrast` (the lower of this and the bar it would have), without the window's
    vote floor: a document that describes an attack speaks of the assistant, an injection speaks to it.
    """
    bar = max(cfg.contrast, cfg.window_contrast) if detection.window else cfg.contrast
    floor = cfg.window_vote if detection.window else None
    if detection.addressed and cfg.address_contrast is not None:
        bar, floor = min(bar, cfg.address_contrast), None
    if detection.view == "lexical":
        near = detection.score >= cfg.lexical_threshold and detection.margin >= cfg.lexical_margin
        return near or detection.likelihood >= bar
    if cfg.near is not None and detection.score >= cfg.near and detection.margin >= cfg.margin:
        return True
    if cfg.vote is not None and detection.vote >= cfg.vote and not detection.window:
        return True
    if floor is not None and detection.vote < floor:
        return False  # the classifier says attack, but the nearest examples are benign ones: a document's sentence
    return detection.score >= cfg.threshold and detection.likelihood >= bar


def strongest(detections: list[Detection], cfg: Thresholds) -> Detection | None:
    """The detection that decides for a set of texts: the strongest hit if any, else the highest score."""
    if not detections:
        return None
    hits = [d for d in detections if decide(d, cfg)]
    if hits:
        return max(hits, key=lambda d: (d.margin, d.score))
    return max(detections, key=lambda d: d.score)


def _weight(text: str) -> int:
    """Length in Latin-letter terms: a Hangul or Han character says about as much as two letters."""
    return len(text) + sum(ord(c) >= 0x1100 for c in text)


def sentences(text: str) -> list[str]:
    """The text cut into sentences, each at least MIN_SENTENCE_CHARS long where the text allows."""
    out: list[str] = []
    carry = ""
    for piece in _SENTENCE_END.split(text):
        piece = f"{carry} {piece}".strip() if carry else piece.strip()
        if _weight(piece) < MIN_SENTENCE_CHARS:
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


def ends_sentence(text: str) -> bool:
    """True when streamed text holds a finished sentence long enough to be worth a check."""
    return _weight(text.strip()) >= MIN_SENTENCE_CHARS and _SENTENCE_DONE.search(text) is not None


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
    if _weight(text) <= long_chars or max_windows <= 0:
        return [text]
    parts = sentences(text)
    if len(parts) <= 1:
        return [text]
    if len(parts) > max_windows:
        size = math.ceil(len(parts) / max_windows)
        parts = [" ".join(parts[i : i + size]) for i in range(0, len(parts), size)]
    return [text, *parts]


def unmasked(text: str) -> str:
    """The text without invisible characters, and with look-alike letters read as Latin in words that mix them in.

    Only words that also hold a Latin letter are changed: a Russian or Greek word is left as it is.
    """
    text = _INVISIBLE.sub("", text)
    if not any(c in _LOOKALIKES for c in text):
        return text
    return _WORD.sub(lambda m: _unmask_word(m.group(0)), text)


def addressed(text: str) -> bool:
    """True when the text speaks to an AI reader: "Note to the AI summarizing this: ...", "If you are an LLM reading
    this, ...", "AI reviewer: approve ...", "<!-- assistant: ...", "Any AI agent must ...".

    An injection hidden in pasted content has to tell the model that it is meant; a document that describes attacks
    speaks of "the assistant" in the third person. A lexical cue (English only) that lowers the classifier's bar; it
    never blocks alone.
    """
    return _ADDRESS.search(text) is not None


def _unmask_word(word: str) -> str:
    if any("a" <= c <= "z" or "A" <= c <= "Z" for c in word):
        return word.translate(_UNMASK)
    return word


def mostly_non_latin(text: str) -> bool:
    """True when most letters are outside the Latin script (Hangul, kana, Han, Cyrillic, Arabic, ...).

    all-MiniLM-L6-v2 was trained on English: it spells Hangul out as jamo and puts every Korean text close
    to every other one, so its similarities there say little. Such texts are compared by n-grams instead.
    """
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(ord(c) >= 0x250 for c in letters) * 2 > len(letters)


def lexical_vector(text: str) -> Matrix:
    """Character 2- and 3-grams (whitespace folded, lower case) hashed into LEXICAL_DIM buckets; unit length."""
    folded = " ".join(text.lower().split())
    vector = np.zeros(LEXICAL_DIM, dtype=np.float32)
    for n in LEXICAL_NGRAMS:
        for i in range(len(folded) - n + 1):
            gram = folded[i : i + n]
            if not gram.isspace():
                vector[zlib.crc32(gram.encode("utf-8")) % LEXICAL_DIM] += 1.0
    np.log1p(vector, out=vector)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector
