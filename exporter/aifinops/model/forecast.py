"""Month-end spend forecast from a daily spend series. Pure; ``now`` and the time zone are
arguments.

Method
------
**Theil–Sen** on the last ``lookback_days`` *full* days of spend: the slope is the median of
the slopes between every pair of days and the intercept ``median(y) − slope·median(x)``
(:func:`theil_sen`, numpy; the same figures as :func:`scipy.stats.theilslopes` with its
default ``method="separate"``, which the tests use as the oracle — importing ``scipy.stats``
at run time costs ~75 MB of resident memory and a second of start-up for these ten lines).
Why this estimator:

* robust — one day with a spike (a training run, a runaway batch job) moves a least-squares
  line a lot and Theil–Sen hardly at all (breakdown point ≈ 29 %);
* no distributional assumption — daily spend is skewed and heteroscedastic, and nothing here
  needs a Gaussian error model;
* fine from 3 points up, cheap (O(n²) pairs for n ≤ a few dozen days), and exact on an exactly
  linear series, which makes the tests exact.

The fitted line gives each remaining day of the month a projected spend, clamped at 0 (a
falling trend never projects negative dollars). The rest of today counts as the projected day
times the fraction of today still to come. The forecast is ``spend so far + Σ projections``,
so it is never below the spend so far.

**Run rate** when there are fewer than :data:`MIN_FIT_DAYS` full days of history:
``month-to-date spend / elapsed days`` projected over the days left. **Insufficient** when the
month started less than :data:`MIN_RUN_RATE_DAYS` ago as well: the forecast is the spend so far
and the result says why. Every :class:`Forecast` carries ``method`` and a ``reason``.

Days are calendar days in the configured time zone: a day in the series is identified by the
local date of its ``day_start`` (so 23- and 25-hour DST days are one day each). A date absent
from the series is *unknown*, not zero: pass ``0.0`` for a day with no spend. Today's (partial)
day and days older than the lookback are ignored by the fit. Money is float USD (gauges).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np

from aifinops.model.calendar import elapsed_days, local_day, local_today, month_bounds

ForecastMethod = Literal["theil_sen", "run_rate", "insufficient"]

MIN_FIT_DAYS = 3
"""Full days of history the trend fit needs."""
MIN_RUN_RATE_DAYS = 1.0 / 24.0
"""Elapsed month (days) below which a run rate is not extrapolated (one hour)."""
DEFAULT_LOOKBACK_DAYS = 28
"""Full days before today that the trend fit uses (four weeks: weekly cycles average out)."""


@dataclass(frozen=True, slots=True)
class Forecast:
    """A month-end forecast.

    ``segments`` is the projected spend path from ``now`` to month end as ``(length in days,
    dollars)`` pieces, in order: the rest of today, then each remaining full day (run rate: one
    piece for the whole remainder). Empty for ``insufficient``.
    """

    method: ForecastMethod
    reason: str
    spend_to_date_usd: float
    month_end_usd: float
    history_days: int  # full days the fit saw (within the lookback)
    slope_usd_per_day: float | None = None  # Theil–Sen slope (change of daily spend per day)
    daily_usd: float | None = None  # projected spend of today (fit) or the run rate
    segments: tuple[tuple[float, float], ...] = ()

    def days_until(self, extra_usd: float) -> float | None:
        """Days from ``now`` until ``extra_usd`` more has been spent on the projected path
        (linear within a piece); ``0.0`` when ``extra_usd <= 0``; ``None`` when the projection
        does not reach it before month end."""
        if extra_usd <= 0:
            return 0.0
        spent = 0.0
        t = 0.0
        for length, dollars in self.segments:
            if dollars > 0 and spent + dollars >= extra_usd:
                return t + length * (extra_usd - spent) / dollars
            spent += dollars
            t += length
        return None


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Theil–Sen line ``(slope, intercept)`` through points ``(x, y)``: the median of the
    slopes of every pair with distinct ``x``, and ``median(y) − slope·median(x)``.

    >>> theil_sen(np.arange(5.0), np.array([1.0, 3.0, 5.0, 7.0, 100.0]))  # one outlier
    (2.0, 1.0)
    """
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    keep = dx != 0
    if not keep.any():
        raise ValueError("Theil-Sen needs at least two distinct x values")
    slope = float(np.median((y[j] - y[i])[keep] / dx[keep]))
    return slope, float(np.median(y) - slope * np.median(x))


def daily_by_date(series: Iterable[tuple[float, float]], tz: str) -> dict[date, float]:
    """Sum a ``(day_start unix seconds, USD)`` series per local date; non-finite values are
    dropped (a missing sample, not a zero)."""
    zone = ZoneInfo(tz)
    out: dict[date, list[float]] = defaultdict(list)
    for ts, usd in series:
        if math.isfinite(ts) and math.isfinite(usd):
            out[datetime.fromtimestamp(ts, zone).date()].append(usd)
    return {d: math.fsum(v) for d, v in out.items()}


@dataclass(frozen=True, slots=True)
class DailyFit:
    """The trend fitted to the full days before ``today`` (:func:`fit_daily`): what a
    forecast needs from the daily series. It changes only when a closed day's spend does or
    the day turns, so the refresh keeps it while today's partial day and ``now`` move."""

    today: date
    history_days: int  # full days within the lookback
    slope: float | None = None  # None: fewer than MIN_FIT_DAYS days, no trend
    intercept: float | None = None


def fit_daily(
    daily: Iterable[tuple[float, float]],
    today: date,
    tz: str,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> DailyFit:
    """Theil–Sen over the full days of ``daily`` before ``today`` and at most
    ``lookback_days`` back (see :func:`forecast_month_end`)."""
    return fit_history(daily_by_date(daily, tz), today, lookback_days)


def fit_history(
    by_date: Mapping[date, float], today: date, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> DailyFit:
    """:func:`fit_daily` from the series already summed per local date
    (:func:`daily_by_date`: finite values only)."""
    first_day = today - timedelta(days=lookback_days)
    history = {d: v for d, v in by_date.items() if first_day <= d < today}
    n = len(history)
    if n < MIN_FIT_DAYS:
        return DailyFit(today, n)
    dates = sorted(history)
    x = np.array([float((d - today).days) for d in dates])
    y = np.array([history[d] for d in dates])
    slope, intercept = theil_sen(x, y)
    return DailyFit(today, n, slope, intercept)


def forecast_month_end(
    spend_to_date_usd: float,
    daily: Iterable[tuple[float, float]],
    now: float,
    tz: str,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> Forecast:
    """Forecast this calendar month's total spend (USD).

    ``spend_to_date_usd`` is the month-to-date spend (≥ 0; negative or non-finite input is
    treated as 0). ``daily`` is the daily series ``(day_start, USD)``; only full days before
    today and at most ``lookback_days`` back are fitted (days of the previous month count, so
    a trend exists from the 1st). See the module docstring for the methods.
    """
    fit = fit_daily(daily, local_today(now, tz), tz, lookback_days)
    return project_month_end(spend_to_date_usd, fit, now, tz)


def exact_partials(values: Iterable[float]) -> tuple[float, ...]:
    """Floats whose exact sum is the exact sum of ``values`` (finite), so that
    ``math.fsum((*exact_partials(v), *more)) == math.fsum((*v, *more))`` bit for bit: a
    month's closed days are summed once, and a refresh adds today's to two or three
    partials instead of 30 values. The ``fsum`` of the values, then of what it leaves out,
    until nothing is (a residual is a sum of floats, so a multiple of the least subnormal:
    never rounded to 0 unless it is 0); each step in C instead of a loop per value."""
    vals = tuple(values)
    fsum = math.fsum
    total = fsum(vals)
    if not math.isfinite(total):
        return _shewchuk_partials(vals)  # NaN and infinities as they always were
    partials = [total]
    while partials[-1]:
        partials.append(fsum((*vals, *(-p for p in partials))))
        if len(partials) > 48:  # pragma: no cover - 2**-1074 is reached long before
            return _shewchuk_partials(vals)
    partials.pop()  # the 0.0 that says the rest is exact
    return tuple(partials) if partials else (0.0,)


def _shewchuk_partials(values: Iterable[float]) -> tuple[float, ...]:
    """Non-overlapping partials (Shewchuk's algorithm, as ``math.fsum`` itself uses)."""
    partials: list[float] = []
    for x in values:
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]
    return tuple(partials)


@functools.lru_cache(maxsize=8192)
def _projected_days(
    slope: float, intercept: float, full_days_left: int
) -> tuple[tuple[tuple[float, float], ...], tuple[float, ...] | None]:
    """The projected path's whole days after today and their dollars' exact partials
    (``None`` when their sum is not finite). Why cached: they change once a day per fit,
    while each of 2,001 budgets is projected every refresh (a piece per day left)."""
    tail = tuple((1.0, max(0.0, intercept + slope * d)) for d in range(1, full_days_left + 1))
    dollars = [v for _, v in tail]
    partials = exact_partials(dollars) if math.isfinite(math.fsum(dollars)) else None
    return tail, partials


def project_month_end(spend_to_date_usd: float, fit: DailyFit, now: float, tz: str) -> Forecast:
    """:func:`forecast_month_end` from a fit of the daily series made the same local day
    (``fit.today`` is today at ``now``)."""
    spend = spend_to_date_usd if math.isfinite(spend_to_date_usd) else 0.0
    spend = max(0.0, spend)
    today = local_day(now, tz)
    if fit.today != today.date:
        raise ValueError(f"a fit of {fit.today} used on {today.date}")
    n = fit.history_days

    if fit.slope is not None and fit.intercept is not None:
        slope, intercept = fit.slope, fit.intercept

        def projected(day: int) -> float:
            return max(0.0, intercept + slope * day)

        rest_of_today = 1.0 - today.elapsed_fraction
        first = (rest_of_today, projected(0) * rest_of_today)
        tail, partials = _projected_days(slope, intercept, today.full_days_left)
        segments = (first, *tail)
        if partials is not None:  # the same fsum: the tail's exact partials stand for it
            path = math.fsum((first[1], *partials))
        else:
            path = math.fsum(s[1] for s in segments)
        return Forecast(
            method="theil_sen",
            reason=f"Theil-Sen trend over {n} full days of daily spend",
            spend_to_date_usd=spend,
            month_end_usd=spend + path,
            history_days=n,
            slope_usd_per_day=slope,
            daily_usd=projected(0),
            segments=segments,
        )

    bounds = month_bounds(now, tz)
    elapsed = elapsed_days(now, tz)
    if elapsed >= MIN_RUN_RATE_DAYS:
        rate = spend / elapsed
        left = bounds.days - elapsed
        return Forecast(
            method="run_rate",
            reason=(
                f"only {n} full day(s) of history ({MIN_FIT_DAYS} needed for a trend fit): "
                f"run rate = month-to-date spend / {elapsed:.2f} elapsed days"
            ),
            spend_to_date_usd=spend,
            month_end_usd=spend + rate * left,
            history_days=n,
            daily_usd=rate,
            segments=((left, rate * left),) if left > 0 else (),
        )
    return Forecast(
        method="insufficient",
        reason=(
            f"only {n} full day(s) of history and the month started less than an hour ago: "
            "no forecast beyond the spend so far"
        ),
        spend_to_date_usd=spend,
        month_end_usd=spend,
        history_days=n,
    )
