"""Garbage collection for a request-heavy server.

CPython's cyclic collector runs a young-generation pass every 700 net container allocations;
a routed request allocates hundreds (the request, its headers, coroutines, futures, the answer),
so at thousands of requests a second it ran constantly, and each full pass walked every object
built at start-up (configuration, app, routes, metrics) though none of them ever becomes
garbage. Here those are frozen out of the collector's view, and the young generation is let
grow large enough that a request's objects are usually freed by reference counting (when the
request ends) before a pass would have to look at them.
"""

from __future__ import annotations

import gc

# young: container allocations between young passes; then how many young passes make a middle
# one, and how many middle passes make a full one (CPython 3.11's defaults: 700, 10, 10)
THRESHOLDS = (50_000, 20, 100)


def tune_gc(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Call once start-up is done: collect what start-up left as garbage (so it is not frozen
    for good), freeze everything alive, and set the thresholds."""

    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
