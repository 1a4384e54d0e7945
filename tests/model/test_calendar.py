"""The calendar (model/calendar.py): month bounds, elapsed days, and the span the
month-to-date books' query asks for and its segments, on literal dates across time zones
and DST."""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import pytest

from aifinops.model.calendar import (
    DAY_SECONDS,
    elapsed_days,
    month_bounds,
    month_pieces,
    month_query_segments,
    month_query_window,
    previous_month_start,
)

DAY = DAY_SECONDS
T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
MAY_1 = 1_746_057_600.0
JUNE_1 = 1_748_736_000.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def at(*args: int, tz: tzinfo = UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("now", "tz", "lookback", "start"),
    [
        # mid-month: 14 days in, 28-day lookback -> 14 more days before the 1st
        ("2025-06-15T15:06:40+00:00", "UTC", 28, "2025-05-18T00:00:00+00:00"),
        # the lookback already inside the month: the month start itself
        ("2025-06-30T10:00:00+00:00", "UTC", 7, "2025-06-01T00:00:00+00:00"),
        # the 1st: a full lookback before it
        ("2025-07-01T00:30:00+00:00", "UTC", 3, "2025-06-28T00:00:00+00:00"),
        # local midnight in Paris (UTC+2 in summer) is 22:00 UTC the day before
        ("2025-06-15T12:00:00+00:00", "Europe/Paris", 14, "2025-05-31T22:00:00+00:00"),
        # across the spring DST change: whole 24 h steps back from the 1st (23:00 local)
        ("2025-04-02T12:00:00+00:00", "Europe/Paris", 3, "2025-03-29T22:00:00+00:00"),
    ],
)
def test_window_starts_on_a_step_boundary_at_the_month_start(now, tz, lookback, start):
    n = ts(now)
    s, e = month_query_window(n, tz, lookback)
    assert s == ts(start) and e == float(int(n))
    local = datetime.fromtimestamp(n, ZoneInfo(tz))
    first = datetime(local.year, local.month, 1, tzinfo=ZoneInfo(tz)).timestamp()
    assert (first - s) % DAY == 0  # a set boundary falls exactly on the month start


def test_segments_start_on_month_boundaries() -> None:
    assert month_query_segments(T0, "UTC", 3, 1) == [(MAY_1, JUNE_1), (JUNE_1, math.floor(T0))]
    # the look-back reaching before the history is a segment of its own, in front
    early = JUNE_1 + 3600.0  # June 1st, 01:00: 3 full days back reach into May
    assert month_query_segments(early, "UTC", 3, 0) == [
        (JUNE_1 - 3 * DAY_SECONDS, JUNE_1),
        (JUNE_1, early),
    ]


def test_previous_month_start_crosses_the_year_in_local_time() -> None:
    assert previous_month_start(JUNE_1, "UTC") == MAY_1
    assert previous_month_start(ts("2025-01-01T00:00:00+01:00"), "Europe/Paris") == ts(
        "2024-12-01T00:00:00+01:00"
    )


def test_pieces_cut_each_segment_from_its_own_start() -> None:
    segments = [(0.0, 10 * DAY), (10 * DAY, 13.5 * DAY)]
    assert month_pieces(segments, 4) == [
        (0.0, 4 * DAY),
        (4 * DAY, 8 * DAY),
        (8 * DAY, 10 * DAY),
        (10 * DAY, 13.5 * DAY),
    ]


def test_month_bounds_utc_leap_february():
    b = month_bounds(at(2024, 2, 15, 13), "UTC")
    assert b == (at(2024, 2, 1), at(2024, 3, 1), 29)


def test_month_bounds_follow_the_time_zone_across_dst():
    paris = ZoneInfo("Europe/Paris")
    # 2024-03-31T22:30Z is already 1 April in Paris (CEST, UTC+2).
    b = month_bounds(at(2024, 3, 31, 22, 30), "Europe/Paris")
    assert b.start == at(2024, 4, 1, tz=paris) == at(2024, 3, 31, 22)
    assert b.end == at(2024, 5, 1, tz=paris)
    assert b.days == 30
    march = month_bounds(at(2024, 3, 15), "Europe/Paris")
    assert march.start == at(2024, 2, 29, 23)  # CET, UTC+1
    assert march.end == at(2024, 3, 31, 22)  # CEST: the month is 743 hours long
    assert march.days == 31


def test_month_bounds_december_rolls_the_year():
    assert month_bounds(at(2023, 12, 31, 23, 59), "UTC") == (at(2023, 12, 1), at(2024, 1, 1), 31)


def test_elapsed_days_counts_local_calendar_days():
    assert elapsed_days(at(2024, 2, 3, 12), "UTC") == 2.5
    assert elapsed_days(at(2024, 2, 1), "UTC") == 0.0
    # Paris, 31 March 2024 (a 23-hour day): 11:00Z is 13:00 CEST, 12 of 23 hours elapsed.
    assert elapsed_days(at(2024, 3, 31, 11), "Europe/Paris") == 30 + 12 / 23
