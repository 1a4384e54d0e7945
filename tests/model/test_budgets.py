"""Budget states at the thresholds, days to exhaustion, scope totals."""

from datetime import UTC, datetime

import pytest

from aifinops.model.budgets import (
    GLOBAL_TENANT,
    Budget,
    budget_state,
    evaluate_budget,
    evaluate_budgets,
    scope_series,
    scope_totals,
)

DAY = 86400.0


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


LINEAR = [(ts(2024, 2, 1) + i * DAY, v) for i, v in enumerate([12.0, 14.0, 16.0, 18.0])]
NOW = ts(2024, 2, 5)


@pytest.mark.parametrize(
    ("spend", "state"),
    [
        (0.0, "ok"),
        (79.5, "ok"),
        (80.0, "warning"),  # exactly at the warning threshold
        (99.5, "warning"),
        (100.0, "critical"),  # exactly at the critical threshold (1.0): not exceeded
        (100.5, "exceeded"),
    ],
)
def test_state_boundaries_with_default_thresholds(spend, state):
    assert budget_state(spend, 100.0, 0.8, 1.0) == state


@pytest.mark.parametrize(
    ("spend", "state"), [(74.5, "ok"), (75.0, "warning"), (90.0, "critical"), (100.0, "critical")]
)
def test_state_boundaries_with_custom_thresholds(spend, state):
    assert budget_state(spend, 100.0, 0.75, 0.9) == state


def test_zero_budget():
    assert budget_state(0.0, 0.0, 0.8, 1.0) == "critical"
    assert budget_state(0.5, 0.0, 0.8, 1.0) == "exceeded"
    s = evaluate_budget(Budget("t", 0.0), 0.0, [], NOW, "UTC")
    assert (s.used_ratio, s.days_to_exhaustion, s.state) == (None, 0.0, "critical")


def test_evaluate_on_the_linear_series():
    # Spend 60 of 195; projected path: 20 today, then 22, 24, 26, 28, 30, ...
    # 135 more is reached 5 days out plus 15/30 of the sixth: 5.5 days.
    s = evaluate_budget(Budget("research", 195.0), 60.0, LINEAR, NOW, "UTC")
    assert s.spend_usd == 60.0
    assert s.forecast_usd == 1160.0
    assert s.days_to_exhaustion == 5.5
    assert s.state == "ok"
    assert s.used_ratio == 60.0 / 195.0
    assert s.forecast.method == "theil_sen"


def test_exhaustion_none_when_not_reached_this_month():
    s = evaluate_budget(Budget("research", 2000.0), 60.0, LINEAR, NOW, "UTC")
    assert s.forecast_usd == 1160.0
    assert s.days_to_exhaustion is None


def test_exhaustion_zero_once_used_up():
    exceeded = evaluate_budget(Budget("research", 50.0), 60.0, LINEAR, NOW, "UTC")
    assert (exceeded.state, exceeded.days_to_exhaustion) == ("exceeded", 0.0)
    exact = evaluate_budget(Budget("research", 60.0), 60.0, LINEAR, NOW, "UTC")
    assert (exact.state, exact.days_to_exhaustion, exact.used_ratio) == ("critical", 0.0, 1.0)


def test_run_rate_exhaustion():
    series = [(ts(2024, 2, 1), 10.0), (ts(2024, 2, 2), 10.0)]
    s = evaluate_budget(Budget("t", 100.0, scope="gpu"), 25.0, series, ts(2024, 2, 3, 12), "UTC")
    assert s.forecast.method == "run_rate"
    assert s.days_to_exhaustion == 7.5  # 75 left at 10 per day
    assert s.forecast_usd == 290.0


def test_scope_totals_and_global():
    by_resource = {("a", "gpu"): 1.0, ("a", "cpu"): 2.0, ("a", "tokens"): 4.0, ("b", "gpu"): 8.0}
    assert scope_totals(by_resource) == {
        ("a", "all"): 7.0,
        ("a", "gpu"): 1.0,
        ("a", "tokens"): 4.0,
        ("b", "all"): 8.0,
        ("b", "gpu"): 8.0,
        (GLOBAL_TENANT, "all"): 15.0,
        (GLOBAL_TENANT, "gpu"): 9.0,
        (GLOBAL_TENANT, "tokens"): 4.0,
    }


def test_scope_series_sums_per_day():
    d0, d1 = ts(2024, 2, 1), ts(2024, 2, 2)
    series = scope_series({("a", "gpu"): [(d0, 1.0), (d1, 2.0)], ("b", "cpu"): [(d0, 4.0)]})
    assert series[("a", "gpu")] == [(d0, 1.0), (d1, 2.0)]
    assert series[(GLOBAL_TENANT, "all")] == [(d0, 5.0), (d1, 2.0)]
    assert series[(GLOBAL_TENANT, "gpu")] == [(d0, 1.0), (d1, 2.0)]


def test_evaluate_budgets_reads_the_scope_key():
    budgets = [Budget("a", 10.0, scope="gpu"), Budget(GLOBAL_TENANT, 100.0), Budget("c", 5.0)]
    spend = scope_totals({("a", "gpu"): 8.0, ("a", "cpu"): 50.0})
    out = evaluate_budgets(budgets, spend, {}, NOW, "UTC")
    assert [(s.tenant, s.spend_usd, s.state) for s in out] == [
        ("a", 8.0, "warning"),
        (GLOBAL_TENANT, 58.0, "ok"),
        ("c", 0.0, "ok"),
    ]
