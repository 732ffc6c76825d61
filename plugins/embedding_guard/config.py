"""embedding_guard's options, validated once when the policy loads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.guarding import GuardConfig, Stage
from plugins.embedding_guard.detector import NonLatin
from plugins.embedding_guard.examples import Preset

# For the prompt_injection preset's trained classifier and all-MiniLM-L6-v2: `contrast` and `window_contrast` picked
# by bench/train_injection.py's cross-validation over the dev files (its model card records them, and a test holds
# these to it), the rest by `python -m bench.injection` on the tune split of tests/plugins/injection_eval.jsonl with
# the classifier fitted at start. Another model or example set wants its own tuning.
DEFAULT_THRESHOLD = 0.30
DEFAULT_NEAR = 0.70  # all-MiniLM-L6-v2 puts paraphrases of one sentence about this close
DEFAULT_MARGIN = 0.10  # not tuned: a near copy must also be clearly nearer an attack than anything benign
DEFAULT_VOTE: float | None = None  # off: beside the trained classifier it blocked only look-alikes
DEFAULT_CONTRAST = 0.50
DEFAULT_WINDOW_CONTRAST = 0.95
DEFAULT_WINDOW_VOTE: float | None = None
# Not tuned (the tune split's attacks are all caught without it): on the development files, 0.4 gained the most
# attacks addressed to an AI reader without blocking a benign text, 0.3 began to block look-alikes (docs/guards.md).
DEFAULT_ADDRESS_CONTRAST = 0.40
DEFAULT_LEXICAL_THRESHOLD = 0.15
DEFAULT_LEXICAL_MARGIN = 0.10


class EmbeddingGuardConfig(GuardConfig):
    apply_to: tuple[Stage, ...] = Field(("input",), description="Check the request, the answer, or both.")
    roles: tuple[str, ...] = Field(
        ("user", "tool"),
        description="Input messages whose text is checked (tool results carry indirect injections).",
    )
    examples: tuple[str, ...] = Field((), description="Attack or deny-topic examples written in the policy.")
    examples_file: str | None = Field(
        None,
        description="File of attack examples: one per line (# comments; \\# starts an example that begins with #), "
        "or *.jsonl with a 'text' field.",
    )
    preset: Preset | None = Field(
        None, description="Shipped example set: prompt_injection (its benign contrast set comes along)."
    )
    benign_examples: tuple[str, ...] = Field(
        (), description="Look-alikes that must pass: a text is blocked only if nearer an attack by `margin`."
    )
    benign_file: str | None = Field(None, description="File of benign contrast examples, same format.")
    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=-1, le=1, description="Least cosine similarity to the nearest attack example."
    )
    near: float | None = Field(
        DEFAULT_NEAR,
        ge=-1,
        le=1,
        description="Cosine similarity at which a text counts as a near copy of an attack example and is blocked "
        "(if also `margin` nearer it than any benign example), whatever the contrast says; null: off.",
    )
    margin: float = Field(
        DEFAULT_MARGIN,
        ge=-2,
        le=2,
        description="How much nearer the nearest attack example a near copy must be than the nearest benign one.",
    )
    vote: float | None = Field(
        DEFAULT_VOTE,
        ge=-2,
        le=2,
        description="Least lead of the 3 nearest attack examples over the 3 nearest benign ones (mean cosine "
        "similarity of each side) at which a text is blocked; null: off.",
    )
    contrast: float = Field(
        DEFAULT_CONTRAST,
        ge=0,
        le=1,
        description="Least attack probability of the classifier fitted to separate the attack examples from the "
        "benign ones, over the model's vectors and the words' n-grams (without benign examples in the policy, a "
        "shipped set of ordinary requests stands in).",
    )
    window_contrast: float = Field(
        DEFAULT_WINDOW_CONTRAST,
        ge=0,
        le=1,
        description="Least attack probability for a long text and each of its sentence windows (the higher of this "
        "and `contrast` applies; the kNN vote alone does not block them): a document about security or rules has "
        "many sentences that may each look like an attack.",
    )
    window_vote: float | None = Field(
        DEFAULT_WINDOW_VOTE,
        ge=-2,
        le=2,
        description="A long text or sentence window blocked by the classifier rule must also have at least this kNN "
        "vote (its nearest examples not mostly benign ones); null: no such floor.",
    )
    address_contrast: float | None = Field(
        DEFAULT_ADDRESS_CONTRAST,
        ge=0,
        le=1,
        description="Least attack probability for a short text or sentence window that speaks to an AI reader "
        "('Note to the AI summarizing this: ...', 'If you are an LLM reading this, ...'; English cues), when lower "
        "than its usual bar, and without the window vote floor; null: no such cue.",
    )
    non_latin: NonLatin = Field(
        "lexical",
        description="Texts mostly outside the Latin script: nearest examples by character n-grams (lexical), or "
        "by the model (semantic; for a multilingual model_path); the classifier reads them either way.",
    )
    lexical_threshold: float = Field(
        DEFAULT_LEXICAL_THRESHOLD, ge=0, le=1, description="Least n-gram similarity, for non-Latin texts."
    )
    lexical_margin: float = Field(
        DEFAULT_LEXICAL_MARGIN, ge=-1, le=1, description="Lead over the nearest benign example, for non-Latin texts."
    )
    action: Literal["block", "flag"] = Field("block", description="block: refuse; flag: record the verdict only.")
    whole_conversation: bool = Field(
        False,
        description="Check every message, not only the latest turn (closes a fabricated-history bypass; "
        "costs one embedding per message per request).",
    )
    max_windows: int = Field(
        16, ge=0, le=256, description="Most sentence windows per long text (0: the whole text only)."
    )
    stream_check: Literal["sentence", "end"] = Field(
        "sentence",
        description="Streamed answers: hold each sentence until it is checked (sentence), or hold the whole "
        "answer and check it once (end).",
    )
    model_path: str | None = Field(
        None, description="sentence-transformers model folder; default: the packaged all-MiniLM-L6-v2."
    )
    trained: bool = Field(
        True,
        description="With the preset alone (no examples, benign examples or files of the policy's own) and the "
        "packaged model: use the preset's shipped classifier, trained on public labelled sets as well, instead "
        "of fitting one on the preset's lines at start. false: always fit on the examples.",
    )
    max_batch: int = Field(32, ge=1, description="Most texts embedded in one call under load.")
    embed_timeout_ms: int = Field(2000, ge=1, description="A slower check counts as an error (see on_error).")

    @field_validator("examples_file", "benign_file")
    @classmethod
    def _file_exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no such file: {path} (relative paths start at the gateway's working directory)")
        return path

    @property
    def uses_trained(self) -> bool:
        """True when the preset's shipped classifier applies: the preset alone, read by the packaged model."""
        own = self.examples or self.examples_file or self.benign_examples or self.benign_file
        return self.trained and self.preset is not None and not own and self.model_path is None

    @model_validator(mode="after")
    def _has_examples(self) -> EmbeddingGuardConfig:
        if not (self.examples or self.examples_file or self.preset):
            raise ValueError("embedding_guard needs attack examples: set examples, examples_file or preset")
        return self
