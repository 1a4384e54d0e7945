"""ROI: exact figures, zero cost, payback, periods in progress."""

from datetime import UTC, date, datetime

import pytest

from aifinops.model.roi import (
    AiCost,
    BenefitInputs,
    DateRange,
    Initiative,
    benefit_breakdown,
    compute_roi,
    evaluate_initiative,
    initiative_window,
)

BENEFITS = BenefitInputs(
    hours_saved=10,  # per person
    hourly_rate=50,
    headcount=4,  # productivity 2000
    error_reduction_rate=20,
    avg_error_cost=25,  # quality 500
    incidents_prevented=1,
    avg_incident_cost=1500,  # risk 1500
)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_breakdown_by_kind():
    assert benefit_breakdown(BENEFITS) == {"productivity": 2000, "quality": 500, "risk": 1500}


def test_roi_and_payback_exact():
    r = compute_roi(BENEFITS, AiCost(gpu_usd=1000, tokens_usd=500, other_usd=100), 40.0)
    assert r.benefits_usd == 4000.0
    assert r.ai_cost.total_usd == 1600.0
    assert r.net_benefit_usd == 2400.0
    assert r.roi_ratio == 1.5  # (4000 - 1600) / 1600
    assert r.benefit_usd_per_day == 100.0
    assert r.payback_days == 16.0  # 1600 / 100
    assert r.reasons == ()


def test_negative_roi():
    r = compute_roi(BenefitInputs(hours_saved=1, hourly_rate=100, headcount=1), AiCost(400), 10)
    assert r.roi_ratio == -0.75
    assert r.payback_days == 40.0


def test_zero_cost_is_undefined_not_infinite():
    r = compute_roi(BENEFITS, AiCost(), 40.0)
    assert r.roi_ratio is None
    assert any("undefined" in reason for reason in r.reasons)
    assert r.payback_days == 0.0


def test_no_benefit_has_no_payback():
    r = compute_roi(BenefitInputs(), AiCost(gpu_usd=10), 30.0)
    assert r.roi_ratio == -1.0
    assert r.payback_days is None
    assert any("payback" in reason for reason in r.reasons)


def test_period_days_must_be_positive():
    with pytest.raises(ValueError, match="period_days"):
        compute_roi(BENEFITS, AiCost(), 0.0)


def test_date_range_in_progress_is_prorated():
    init = Initiative(
        "copilot",
        ("support",),
        BENEFITS,
        DateRange(date(2024, 1, 1), date(2024, 1, 8)),  # 8 days, both inclusive
        other_infra_cost_usd=400.0,
    )
    window = initiative_window(init, ts(2024, 1, 3), "UTC")
    assert (window.start, window.end, window.as_of) == (
        ts(2024, 1, 1),
        ts(2024, 1, 9),
        ts(2024, 1, 3),
    )
    assert (window.period_days, window.realized_fraction) == (8.0, 0.25)
    out = evaluate_initiative(init, window, gpu_usd=300.0, tokens_usd=100.0)
    r = out.result
    assert r.benefits_usd == 1000.0  # a quarter of 4000
    assert r.ai_cost == AiCost(300.0, 100.0, 100.0)  # other: a quarter of 400
    assert r.roi_ratio == 1.0
    assert r.payback_days == 1.0  # 500 / (4000 / 8)


def test_finished_period_is_whole():
    init = Initiative("x", ("a",), BENEFITS, DateRange(date(2024, 1, 1), date(2024, 1, 8)))
    window = initiative_window(init, ts(2024, 6, 1), "UTC")
    assert (window.as_of, window.realized_fraction) == (ts(2024, 1, 9), 1.0)


def test_period_not_started():
    init = Initiative("x", ("a",), BENEFITS, DateRange(date(2024, 1, 1), date(2024, 1, 8)))
    window = initiative_window(init, ts(2023, 12, 1), "UTC")
    r = evaluate_initiative(init, window, 0.0, 0.0).result
    assert (window.realized_fraction, r.benefits_usd, r.roi_ratio) == (0.0, 0.0, None)
    assert any("not started" in reason for reason in r.reasons)


def test_month_period_follows_the_calendar():
    init = Initiative("x", ("a",), BENEFITS)
    window = initiative_window(init, ts(2024, 2, 10), "UTC")
    assert (window.start, window.end, window.period_days) == (ts(2024, 2, 1), ts(2024, 3, 1), 29.0)
    assert window.realized_fraction == 9 / 29
