"""Calendar arithmetic, in one place: the calendar month containing an instant in a time
zone (:func:`month_bounds`), how much of it has elapsed, today's local date, and for the
month-to-date books which span of time the month query asks OpenCost for and how it is cut
into requests. Pure: ``now`` and the time zone are arguments.

Days are calendar days in the time zone: DST-exact, a 23- or 25-hour day is one day.
"""

from __future__ import annotations

import functools
import math
from datetime import date, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

DAY_SECONDS = 86400.0


class MonthBounds(NamedTuple):
    """The calendar month containing an instant, in a time zone."""

    start: float  # unix seconds of local midnight on the 1st
    end: float  # unix seconds of local midnight on the 1st of the next month (exclusive)
    days: int  # days in the month (28-31)


def _local_midnight(d: date, zone: ZoneInfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()


# Cached (both pure): a refresh asks for the same instant once per budget, 2,001 at 10k GPUs.
@functools.lru_cache(maxsize=64)
def month_bounds(now: float, tz: str) -> MonthBounds:
    """Start and end (unix seconds) and length in days of the calendar month containing
    ``now`` in time zone ``tz`` (an IANA name, e.g. ``"Europe/Paris"``).

    >>> month_bounds(1709251200.0, "UTC")  # 2024-03-01T00:00:00Z
    MonthBounds(start=1709251200.0, end=1711929600.0, days=31)
    """
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, zone).date()
    first = local.replace(day=1)
    nxt = date(first.year + 1, 1, 1) if first.month == 12 else first.replace(month=first.month + 1)
    return MonthBounds(_local_midnight(first, zone), _local_midnight(nxt, zone), (nxt - first).days)


def elapsed_days(now: float, tz: str) -> float:
    """Days of the calendar month elapsed at ``now`` in ``tz``: whole local days before today
    plus the fraction of today elapsed (DST-exact: a 23- or 25-hour day counts as one day).
    In ``[0, days in month)``."""
    today = local_day(now, tz)
    return (today.date.day - 1) + today.elapsed_fraction


class LocalDay(NamedTuple):
    """Today at an instant, in a time zone (:func:`local_day`)."""

    date: date
    elapsed_fraction: float  # of today, 0 at local midnight
    full_days_left: int  # whole days after today until month end


@functools.lru_cache(maxsize=64)
def local_day(now: float, tz: str) -> LocalDay:
    """The local date at ``now`` in ``tz``, the fraction of that day elapsed, and the whole
    days left in its month after it."""
    zone = ZoneInfo(tz)
    today = datetime.fromtimestamp(now, zone).date()
    start = _local_midnight(today, zone)
    end = _local_midnight(today + timedelta(days=1), zone)
    bounds = month_bounds(now, tz)
    return LocalDay(today, (now - start) / (end - start), bounds.days - today.day)


def local_today(now: float, tz: str) -> date:
    """The local date at ``now`` in ``tz``."""
    return datetime.fromtimestamp(now, ZoneInfo(tz)).date()


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
