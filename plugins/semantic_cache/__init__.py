"""semantic_cache: serve answers to paraphrases of earlier questions, verified against near misses.

    plugins:
      - use: semantic_cache
        threshold: 0.70          # cosine similarity of the last user turns (tuned with the verifier)
        strictness: balanced     # verifier: strict | balanced | off
        store: memory            # or redis: entries shared by every replica
        shared: false            # true: callers share answers

Only the last user turn is compared; everything else (model, system prompt, earlier turns, tools,
parameters, caller) must match exactly.
"""

from plugins.semantic_cache.plugin import SemanticCache, SemanticCacheConfig, last_user_text

PLUGIN = SemanticCache

__all__ = ["PLUGIN", "SemanticCache", "SemanticCacheConfig", "last_user_text"]
