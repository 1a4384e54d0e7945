"""The month-end forecast: exact figures on hand-built daily series."""

import warnings
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from aifinops.model.forecast import MIN_FIT_DAYS, forecast_month_end, theil_sen

DAY = 86400.0


def ts(*args: int, tz=UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def days(first: tuple[int, int, int], values: list[float]) -> list[tuple[float, float]]:
    start = ts(*first)
    return [(start + i * DAY, v) for i, v in enumerate(values)]


def test_theil_sen_on_a_linear_series_is_exact():
    # Feb 2024: day d costs 10 + 2d dollars. Four full days seen; today is the 5th, at 00:00.
    fc = forecast_month_end(60.0, days((2024, 2, 1), [12, 14, 16, 18]), ts(2024, 2, 5), "UTC")
    assert fc.method == "theil_sen"
    assert fc.history_days == 4
    assert fc.slope_usd_per_day == 2.0
    assert fc.daily_usd == 20.0  # projected spend of today
    # 60 so far + 20 today + sum over Feb 6..29 of (20 + 2k), k = 1..24 = 480 + 600
    assert fc.month_end_usd == 1160.0 == sum(10 + 2 * d for d in range(1, 30))
    assert fc.segments[0] == (1.0, 20.0)
    assert len(fc.segments) == 25


def test_the_rest_of_today_is_prorated():
    # Same series, noon on the 5th: half of today's projected 20 is spent (MTD 70).
    fc = forecast_month_end(70.0, days((2024, 2, 1), [12, 14, 16, 18]), ts(2024, 2, 5, 12), "UTC")
    assert fc.segments[0] == (0.5, 10.0)
    assert fc.month_end_usd == 1160.0


def test_partial_today_and_old_days_are_not_fitted():
    series = [*days((2024, 2, 1), [12, 14, 16, 18]), (ts(2024, 2, 5), 999.0)]
    series.append((ts(2023, 12, 1), 5000.0))  # older than the 28-day lookback
    fc = forecast_month_end(60.0, series, ts(2024, 2, 5), "UTC")
    assert (fc.history_days, fc.slope_usd_per_day, fc.month_end_usd) == (4, 2.0, 1160.0)


def test_one_day_spike_barely_moves_the_trend():
    # Feb 3 spikes to 160. Pairwise slopes: -142, 2, 2, 2, 74, 146 -> median 2.
    # Intercept = median(y) - 2 * median(x) = 16 - 2 * (-2.5) = 21.
    series = days((2024, 2, 1), [12, 14, 160, 18])
    fc = forecast_month_end(204.0, series, ts(2024, 2, 5), "UTC")
    assert fc.slope_usd_per_day == 2.0
    assert fc.daily_usd == 21.0
    assert fc.month_end_usd == 204 + 21 + sum(21 + 2 * k for k in range(1, 25))  # 1329


def test_previous_month_days_give_a_trend_on_the_first():
    series = days((2024, 2, 26), [12, 14, 16, 18])
    fc = forecast_month_end(0.0, series, ts(2024, 3, 1), "UTC")
    assert fc.method == "theil_sen"
    assert fc.month_end_usd == 20 + sum(20 + 2 * k for k in range(1, 31))  # 1550


def test_falling_trend_never_projects_negative_days():
    # 40, 30, 20, 10 -> slope -10, today's projection 0: nothing more is forecast.
    fc = forecast_month_end(100.0, days((2024, 2, 1), [40, 30, 20, 10]), ts(2024, 2, 5), "UTC")
    assert fc.slope_usd_per_day == -10.0
    assert all(d >= 0 for _, d in fc.segments)
    assert fc.month_end_usd == 100.0
    assert fc.days_until(1.0) is None


def test_run_rate_with_too_little_history():
    fc = forecast_month_end(25.0, days((2024, 2, 1), [10, 10]), ts(2024, 2, 3, 12), "UTC")
    assert fc.method == "run_rate"
    assert f"({MIN_FIT_DAYS} needed" in fc.reason
    assert fc.daily_usd == 10.0  # 25 / 2.5 elapsed days
    assert fc.month_end_usd == 25.0 + 10.0 * 26.5  # 290
    assert fc.days_until(15.0) == 1.5


def test_insufficient_right_after_the_month_starts():
    fc = forecast_month_end(3.0, [], ts(2024, 2, 1, 0, 30), "UTC")
    assert fc.method == "insufficient"
    assert "less than an hour" in fc.reason
    assert fc.month_end_usd == 3.0
    assert fc.days_until(1.0) is None
    assert fc.days_until(0.0) == 0.0


def test_bad_inputs_are_dropped_not_propagated():
    series = [*days((2024, 2, 1), [12, 14, 16, 18]), (ts(2024, 2, 2), float("nan"))]
    fc = forecast_month_end(float("nan"), series, ts(2024, 2, 5), "UTC")
    assert fc.spend_to_date_usd == 0.0
    assert fc.month_end_usd == 1100.0  # 0 + 20 + 1080


@pytest.mark.parametrize("spend", [0.0, 1.0, 1e6])
def test_forecast_is_never_below_spend(spend):
    for series in ([], days((2024, 2, 1), [5, 1, 0, 0]), days((2024, 2, 1), [0, 0, 0, 0])):
        fc = forecast_month_end(spend, series, ts(2024, 2, 5, 6), "UTC")
        assert fc.month_end_usd >= spend


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-60, max_value=0),
            st.floats(min_value=0, max_value=1e6, allow_nan=False),
        ),
        min_size=2,
        max_size=40,
    ).filter(lambda pts: len({x for x, _ in pts}) >= 2)
)
def test_theil_sen_matches_scipy(points):
    """The numpy Theil–Sen gives scipy's ``theilslopes`` (default method) figures."""
    x = np.array([float(p[0]) for p in points])
    y = np.array([p[1] for p in points])
    slope, intercept = theil_sen(x, y)
    with warnings.catch_warnings():  # its confidence interval warns on repeated x
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = scipy_stats.theilslopes(y, x)
    assert slope == pytest.approx(float(ref[0]), rel=1e-9, abs=1e-9)
    assert intercept == pytest.approx(float(ref[1]), rel=1e-9, abs=1e-6)


def test_theil_sen_needs_two_distinct_x():
    with pytest.raises(ValueError, match="two distinct"):
        theil_sen(np.array([1.0, 1.0]), np.array([2.0, 3.0]))
