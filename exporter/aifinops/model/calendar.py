"""Calendar arithmetic of the month-to-date books: which span of time the month query asks
OpenCost for, and how it is cut into requests. Pure: ``now`` and the time zone are
arguments (the month's own bounds are :func:`aifinops.model.forecast.month_bounds`).
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

from aifinops.model.forecast import month_bounds

DAY_SECONDS = 86400.0


def month_query_window(now: float, tz: str, lookback_days: int) -> tuple[float, float]:
    """``(start, end)`` unix seconds of the month-to-date query at ``now``.

    ``start`` is the calendar month's start in time zone ``tz`` moved back by whole 24-hour
    days until ``lookback_days`` full days before today are covered (so the forecast has a
    trend on the 1st); a set boundary therefore falls exactly on the month start, and the
    month-to-date spend is the sum of the sets from there. Around a DST change the sets
    before the month start are offset by the hour from local midnights (they only feed the
    trend). ``end`` is ``now`` rounded down to the second.
    """
    bounds = month_bounds(now, tz)
    day_of_month = datetime.fromtimestamp(now, ZoneInfo(tz)).day
    extra = max(0, lookback_days - (day_of_month - 1))
    return bounds.start - extra * DAY_SECONDS, float(math.floor(now))


def previous_month_start(month_start: float, tz: str) -> float:
    """Local midnight on the 1st of the month before the one starting at ``month_start``."""
    first = datetime.fromtimestamp(month_start, ZoneInfo(tz)).date()
    year, month = (first.year - 1, 12) if first.month == 1 else (first.year, first.month - 1)
    prev = first.replace(year=year, month=month, day=1)
    return datetime(prev.year, prev.month, 1, tzinfo=ZoneInfo(tz)).timestamp()


def month_query_segments(
    now: float, tz: str, lookback_days: int, history_months: int
) -> list[tuple[float, float]]:
    """The windows the month query covers, oldest first, each asked with its own ``window``
    so that a set boundary falls on every month start: ``history_months`` whole calendar
    months before the current one (for chargeback), the current month to ``now``, and in
    front the lookback days (:func:`month_query_window`) that reach before all of those."""
    lookback_start, end = month_query_window(now, tz, lookback_days)
    current = month_bounds(now, tz).start
    starts = [current]
    for _ in range(history_months):
        starts.insert(0, previous_month_start(starts[0], tz))
    segments: list[tuple[float, float]] = []
    if lookback_start < starts[0]:
        segments.append((lookback_start, starts[0]))
    segments += list(zip(starts, [*starts[1:], end], strict=True))
    return [(a, b) for a, b in segments if b > a]


def month_pieces(segments: list[tuple[float, float]], days: int) -> list[tuple[float, float]]:
    """Each segment cut into requests of ``days`` 24-hour steps from its start (the last one
    shorter): the sets of the pieces are the segment's own sets."""
    out: list[tuple[float, float]] = []
    span = days * DAY_SECONDS
    for start, end in segments:
        t = start
        while t < end:
            out.append((t, min(t + span, end)))
            t += span
    return out
