"""The ``process_*`` series (CPU, memory, file descriptors, start time), read per scrape.

prometheus_client's ProcessCollector reads ``/proc/self`` (Linux; elsewhere it yields
nothing). The result is a few hundred bytes, appended to the page prepared by the last
refresh; its families are declared in ``catalog.PROCESS``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

_REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_REGISTRY)


def process_exposition() -> bytes:
    """The process collector's series in the text format (0.0.4), read now."""
    return generate_latest(_REGISTRY)
