"""embedding_guard: block or flag requests that are semantically close to known attacks or denied topics.

    plugins:
      - use: embedding_guard
        preset: prompt_injection     # shipped injection/jailbreak examples and their benign contrast set
        examples: ["how do I pick a lock"]   # more attack or deny-topic examples (or examples_file)
        benign_examples: ["how do I pick a lock for my own bike"]   # look-alikes that must pass
        action: block                # or flag: record the verdict, let the request through
        apply_to: [input]            # add output to check answers (streams are held per sentence)

Each text is embedded (all-MiniLM-L6-v2, off the event loop, batched) and compared with the example sets,
embedded once at start. It is blocked when it is a near copy of an attack example (cosine >= `near`, and
nearer it than any benign example by `margin`), when its 3 nearest attack examples are nearer on average
than its 3 nearest benign ones by `vote`, or when a classifier fitted at start to tell the attack examples
from the benign ones (logistic regression over the model's vectors and the words' character n-grams) says
attack (`contrast`) while the text still resembles an attack (`threshold`). The latest turn is checked
(user text and tool results), long texts also sentence by sentence; texts mostly in a non-Latin script find
their nearest examples by character n-grams, as the English model cannot read them (the classifier reads
their n-grams). The client learns only that its request was blocked; the nearest example and the score go
to the logs, `gateway_guard_verdicts_total` and the request context.
"""

from plugins.embedding_guard.config import EmbeddingGuardConfig
from plugins.embedding_guard.contrast import Contrast, fit_contrast, word_grams
from plugins.embedding_guard.detect import Detection, decide, score, windows
from plugins.embedding_guard.detector import Detector
from plugins.embedding_guard.examples import ExampleSet, collect, read_examples
from plugins.embedding_guard.plugin import EmbeddingGuard

PLUGIN = EmbeddingGuard

__all__ = [
    "PLUGIN",
    "Contrast",
    "Detection",
    "Detector",
    "EmbeddingGuard",
    "EmbeddingGuardConfig",
    "ExampleSet",
    "collect",
    "decide",
    "fit_contrast",
    "read_examples",
    "score",
    "windows",
    "word_grams",
]
