"""Health of the sources and of the refresh loop, as the exposition needs it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source after a refresh.

    ``age_seconds`` is the age of the data in use (``None`` when none is in use);
    ``stale`` is true when good data existed but passed its staleness limit and was dropped;
    ``errors`` counts failed fetches per reason since start.
    """

    name: str
    up: bool
    age_seconds: float | None
    stale: bool
    duration_seconds: float
    errors: Mapping[str, int] = field(default_factory=dict)
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshStatus:
    sources: tuple[SourceStatus, ...]
    duration_seconds: float
    completed_at: float
    refreshes: int
