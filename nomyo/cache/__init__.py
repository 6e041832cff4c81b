"""The response cache (issue 15): exact and semantic, isolated per caller, in memory, SQLite or
Redis. `ResponseCache` (cache.py) is what the exchange pipeline calls; see its docstring."""

from .assemble import Answer
from .cache import Hit, ResponseCache
from .config import CacheConfig
from .request import HEADER, CacheRequest, strip_nomyo, strip_nomyo_raw
from .semantic import Embedder
from .stats import register_cache_metrics

__all__ = ["HEADER", "Answer", "CacheConfig", "CacheRequest", "Embedder", "Hit", "ResponseCache",
           "register_cache_metrics", "strip_nomyo", "strip_nomyo_raw"]
