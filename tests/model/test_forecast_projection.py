"""``project_month_end``'s theil_sen path keeps each fit's whole days after today (and
their dollars' exact partials) across refreshes of the same day: the forecast is exactly
what projecting every piece again gives (the code before, kept below as the oracle), for
fits across a month, the last days of a month, signed zeros, tiny and huge slopes, a
projection that goes negative (clipped at 0) and one that overflows."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from aifinops.model.calendar import local_day
from aifinops.model.forecast import DailyFit, Forecast, project_month_end


def reference_theil_sen(spend_to_date_usd: float, fit: DailyFit, now: float, tz: str) -> Forecast:
    """The theil_sen branch of project_month_end as it was (every piece projected)."""
    spend = spend_to_date_usd if math.isfinite(spend_to_date_usd) else 0.0
    spend = max(0.0, spend)
    today = local_day(now, tz)
    assert fit.slope is not None and fit.intercept is not None
    slope, intercept = fit.slope, fit.intercept

    def projected(day: int) -> float:
        return max(0.0, intercept + slope * day)

    rest_of_today = 1.0 - today.elapsed_fraction
    segments = [(rest_of_today, projected(0) * rest_of_today)]
    segments += [(1.0, projected(d)) for d in range(1, today.full_days_left + 1)]
    return Forecast(
        method="theil_sen",
        reason=f"Theil-Sen trend over {fit.history_days} full days of daily spend",
        spend_to_date_usd=spend,
        month_end_usd=spend + math.fsum(s[1] for s in segments),
        history_days=fit.history_days,
        slope_usd_per_day=slope,
        daily_usd=projected(0),
        segments=tuple(segments),
    )


def outcome(project: Callable[..., Forecast], *args: object) -> str:
    """The forecast's ``repr``, or the error it raised (fsum's intermediate overflow)."""
    try:
        return repr(project(*args))
    except OverflowError as e:
        return f"OverflowError: {e}"


LINES = [
    (0.0, 10.0),
    (-0.0, -0.0),
    (0.1, 3.3),
    (-1.7, 20.0),  # reaches 0 within the month
    (1e-300, 5e-324),
    (0.3333333333333333, 1e-17),
    (1e300, 1e308),  # the pieces overflow to inf
    (-1e308, 1e308),
    (7.0 / 3.0, 1.0 / 3.0),
]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/St_Johns"])
def test_projection_is_the_same_as_every_piece_projected(tz: str) -> None:
    start = datetime(2025, 10, 20, 3, 17, tzinfo=UTC)
    nows = [(start + timedelta(hours=h * 7.5)).timestamp() for h in range(45)]
    spends = [0.0, 12.5, float("nan"), 1e12]
    compared = 0
    for now in nows:
        today = local_day(now, tz).date
        for slope, intercept in LINES:
            fit = DailyFit(today, 9, slope, intercept)
            for spend in spends:
                for _ in range(2):  # the second time from the cache
                    new = outcome(project_month_end, spend, fit, now, tz)
                    old = outcome(reference_theil_sen, spend, fit, now, tz)
                    assert new == old, (now, tz, slope, intercept, spend)
                    compared += 1
    assert compared == len(nows) * len(LINES) * len(spends) * 2
    # the run met an overflow
    assert "OverflowError" in outcome(
        project_month_end, 1.0, DailyFit(today, 9, 1e300, 1e308), now, tz
    )
