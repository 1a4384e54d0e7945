"""The finance step on hand-built inputs: month to date from daily sets, the per-period
ledger across a month boundary, charge-back kept on its resource, budgets and ROI."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from aifinops.model.budgets import Budget
from aifinops.model.finance import FinanceContext, FinanceInputs, FinanceState, build_finance
from aifinops.model.inputs import AllocationSet, DailyAllocationSets, Inputs
from aifinops.model.report import ModelState, build_report
from aifinops.model.roi import BenefitInputs, Initiative
from tests.model.builders import context, pod, pricer, resolver

DAY = 86400.0
JUNE = datetime.fromisoformat("2025-06-01T00:00:00+00:00").timestamp()


def daily(start: float, days: int, end: float, usd_per_day: dict[str, float]):
    """Daily sets from ``start``: each tenant namespace team-<t> spends its figure per day
    (on gpu), the last set partial up to ``end``."""
    sets = []
    for i in range(days):
        s = start + i * DAY
        e = min(s + DAY, end)
        share = (e - s) / DAY
        rows = tuple(pod(f"team-{t}", "p", gpu_cost=usd * share) for t, usd in usd_per_day.items())
        sets.append((s, e, AllocationSet((e - s) / 3600, rows)))
    return DailyAllocationSets(start, end, tuple(sets))


def report_at(now: float, state: ModelState, rate: dict[str, float]):
    rows = tuple(pod(f"team-{t}", "p", gpu_cost=usd) for t, usd in rate.items())
    return build_report(Inputs(None, AllocationSet(1.0, rows)), context(), state, now)


def test_month_to_date_budgets_and_roi_from_daily_sets():
    now = JUNE + 10 * DAY + DAY / 2  # 10.5 days into June
    monthly = daily(JUNE - 5 * DAY, 16, now, {"a": 24.0, "b": 48.0})
    report, _ = report_at(now, ModelState(), {"a": 1.0, "b": 2.0})
    ctx = FinanceContext(
        lookback_days=5,
        budgets=(Budget("a", 300.0), Budget("b", 500.0, scope="gpu"), Budget("__all__", 1000.0)),
        initiatives=(
            Initiative("x", ("a",), BenefitInputs(hours_saved=10, hourly_rate=30, headcount=3)),
        ),
    )
    f, _ = build_finance(
        report, FinanceInputs(monthly=monthly), ctx, resolver(), pricer(), FinanceState(), now
    )
    # 10.5 days of June (the 5 days of May only feed the trend)
    assert f.tenant_month_to_date == pytest.approx({"a": 252.0, "b": 504.0})
    by = {(b.tenant, b.scope): b for b in f.budgets}
    assert by[("a", "all")].spend_usd == pytest.approx(252.0)
    assert by[("a", "all")].state == "warning"  # 0.84
    assert by[("b", "gpu")].state == "exceeded"
    assert by[("__all__", "all")].spend_usd == pytest.approx(756.0)
    # a flat $24/day: the forecast is the spend plus 19.5 more days
    assert by[("a", "all")].forecast_usd == pytest.approx(252.0 + 24.0 * 19.5)
    assert by[("a", "all")].forecast.method == "theil_sen"
    assert f.cluster is not None and f.cluster.forecast_usd == pytest.approx(756 + 72 * 19.5)
    # ROI: $900/month of benefit, 10.5/30 of it so far, against a's $252
    (roi,) = f.initiatives
    assert roi.result.ai_cost.gpu_usd == pytest.approx(252.0)
    assert roi.result.benefits_usd == pytest.approx(900 * 10.5 / 30)
    assert roi.result.roi_ratio == pytest.approx((315 - 252) / 252)


def test_ledger_splits_across_the_month_boundary_and_keeps_periods():
    end_of_may = JUNE - 1800
    state = ModelState()
    fstate = FinanceState()
    ctx = FinanceContext()
    for now in (end_of_may, JUNE + 1800):  # one hour at $4/h, half of it in each month
        report, state = report_at(now, state, {"a": 4.0})
        f, fstate = build_finance(report, FinanceInputs(), ctx, resolver(), pricer(), fstate, now)
    assert f.period == "2025-06"
    may = f.period_dollars("2025-05", "allocation")
    june = f.period_dollars("2025-06", "allocation")
    assert may == pytest.approx({("a", "gpu"): 2.0})
    assert june == pytest.approx({("a", "gpu"): 2.0})
    # the ledger adds up to the counter
    assert math.fsum([*may.values(), *june.values()]) == pytest.approx(
        report.accrued[("a", "gpu", "allocation")]
    )
    assert f.period_dollars("2025-04", "allocation") is None
    # without OpenCost's daily sets there is no month to date and no infra budget
    assert f.tenant_month_to_date == {} and not f.infra_available


def test_history_is_bounded():
    ctx = FinanceContext(history_months=2)
    state, fstate = ModelState(), FinanceState()
    for month in range(1, 5):
        now = datetime.fromisoformat(f"2025-0{month}-15T00:00:00+00:00").timestamp()
        report, state = report_at(now, state, {"a": 1.0})
        f, fstate = build_finance(report, FinanceInputs(), ctx, resolver(), pricer(), fstate, now)
    assert sorted(f.periods) == ["2025-03", "2025-04"]


def test_daily_sets_are_folded_once_per_answer():
    """The month's sets are folded again only when a new answer (or tenancy) arrives; the
    figures are the same either way."""
    now = JUNE + 10 * DAY + DAY / 2
    monthly = daily(JUNE, 11, now, {"a": 24.0, "b": 48.0})
    ctx = FinanceContext(budgets=(Budget("a", 300.0),))
    res = resolver()
    report, state = report_at(now, ModelState(), {"a": 1.0, "b": 2.0})
    _, s1 = build_finance(
        report, FinanceInputs(monthly=monthly), ctx, res, pricer(), FinanceState(), now
    )
    assert s1.infra is not None and s1.infra.sets is monthly
    later = now + 300
    report2, _ = report_at(later, state, {"a": 1.0, "b": 2.0})
    f2, s2 = build_finance(report2, FinanceInputs(monthly=monthly), ctx, res, pricer(), s1, later)
    assert s2.infra is s1.infra  # reused
    fresh, _ = build_finance(
        report2, FinanceInputs(monthly=monthly), ctx, res, pricer(), FinanceState(), later
    )
    assert f2.tenant_month_to_date == fresh.tenant_month_to_date
    # a new answer (one more dollar for a) is folded again
    monthly2 = daily(JUNE, 11, now, {"a": 25.0, "b": 48.0})
    f3, s3 = build_finance(report2, FinanceInputs(monthly=monthly2), ctx, res, pricer(), s2, later)
    assert s3.infra is not s2.infra and s3.infra is not None and s3.infra.sets is monthly2
    assert f3.tenant_month_to_date["a"] > f2.tenant_month_to_date["a"]
    # another tenancy resolver (a config reload) too
    _, s4 = build_finance(
        report2, FinanceInputs(monthly=monthly2), ctx, resolver(), pricer(), s3, later
    )
    assert s4.infra is not s3.infra
