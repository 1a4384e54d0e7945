"""Self-metrics of the sources that read several scrape targets (the token sources).

The exposition knows such a source only by the shape a source declares
(:class:`aifinops.status.ScrapeTargets`), never by its class, so it imports no source module
(docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from aifinops.exposition.catalog import TOKEN_SERIES_SKIPPED, TOKEN_TARGET_UP
from aifinops.exposition.render import Family
from aifinops.status import ScrapeTargets as ScrapeTargets


def token_source_families(sources: Iterable[ScrapeTargets]) -> list[Family]:
    """The token sources' own self-metrics: each scrape target's state and the series
    skipped as unreadable (the refresh loop renders them with its own)."""
    up: list[tuple[tuple[str, ...], float]] = []
    skipped: list[tuple[tuple[str, ...], float]] = []
    for source in sources:
        for display, ok in source.target_status():
            up.append(((source.name, display), 1.0 if ok else 0.0))
        skipped.append(((source.name,), float(source.skipped_total)))
    if not skipped:
        return []
    return [Family(TOKEN_TARGET_UP, up), Family(TOKEN_SERIES_SKIPPED, skipped)]
