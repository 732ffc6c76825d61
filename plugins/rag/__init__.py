"""rag: retrieve passages from a document index and inject them into chat requests.

    gateway rag ingest --index ./kb docs/          # build the index (versioned)

plugins:
  - use: rag                   # before exact_cache / semantic_cache, so their keys carry the index version
    index: ./kb
    top_k: 3
    mode: hybrid               # dense + BM25, fused with RRF (rrf_k: 60)
    inject_as: system          # or user_prefix
    max_context_tokens: 1500

Every option: docs/rag.md.
"""

from plugins.rag.config import RagConfig
from plugins.rag.plugin import Rag, RagResult

PLUGIN = Rag

__all__ = ["PLUGIN", "Rag", "RagConfig", "RagResult"]
