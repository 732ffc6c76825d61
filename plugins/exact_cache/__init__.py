"""exact_cache: answer repeated requests from a cache keyed by the exact request and the caller.

plugins:
  - use: exact_cache
    store: memory            # or redis (redis_url, shared across replicas)
    ttl_s: 3600
    shared: false            # true: callers share answers
    cache_sampled: false     # temperature > 0 is not cached unless true
"""

from plugins.exact_cache.plugin import ExactCache, ExactCacheConfig

PLUGIN = ExactCache

__all__ = ["PLUGIN", "ExactCache", "ExactCacheConfig"]
