"""The response cache (issue 15): exact and semantic, isolated per caller, in memory, SQLite or
Redis. `nomyo.cache.cache.ResponseCache` is what the exchange pipeline calls; see its docstring.

Nothing is imported here: `nomyo.config` reads `nomyo.cache.config`, and a router whose cache is
off should not load numpy and the vector index for it.
"""
