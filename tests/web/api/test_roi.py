"""ROI per initiative (series and API) from configured benefits and measured cost, and the
what-if calculator."""

from __future__ import annotations

import pytest

from aifinops.demo.finance import month_start, sim_month_to_date
from tests.web.api.conftest import T0
from tests.web.conftest import series

MONTH_SECONDS = 30 * 86400.0  # June


async def test_initiative_roi_matches_benefits_and_measured_cost(finance_demo):
    await finance_demo.refresh()
    page = await finance_demo.metrics()
    summary = await (await finance_demo.client.get("/api/v1/summary")).json()
    roi = {r["initiative"]: r for r in summary["roi"]}
    f = (T0 - month_start(T0, "UTC")) / MONTH_SECONDS
    mtd = sim_month_to_date(finance_demo.sim, T0)

    # fraud-detection: risk's measured cost; 150 errors x $35 + 2 incidents x $40,000 a month
    cost = mtd["risk"]
    benefit = (150 * 35 + 2 * 40_000) * f
    fraud = roi["fraud-detection"]
    assert fraud["ai_cost_usd"] == pytest.approx(cost, rel=1e-12)
    assert fraud["benefits_usd"] == pytest.approx(benefit, rel=1e-12)
    assert fraud["roi_ratio"] == pytest.approx((benefit - cost) / cost, rel=1e-12)
    assert fraud["payback_days"] == pytest.approx(cost / ((150 * 35 + 80_000) / 30), rel=1e-12)

    # support-assistant: chatbot's cost + $1,200/month of other infrastructure, pro-rated
    cost = mtd["chatbot"] + 1200 * f
    benefit = 40 * 55 * 30 * f
    assert roi["support-assistant"]["ai_cost_usd"] == pytest.approx(cost, rel=1e-12)
    assert roi["support-assistant"]["roi_ratio"] == pytest.approx((benefit - cost) / cost)

    # search-relevance loses money; legal-drafting has no cost: ROI undefined, said why
    assert roi["search-relevance"]["roi_ratio"] < 0
    legal = roi["legal-drafting"]
    assert legal["roi_ratio"] is None and legal["ai_cost_usd"] == 0.0
    assert any("undefined" in reason for reason in legal["reasons"])

    # /metrics agrees; the undefined ratio is absent, never infinite
    ratios = series(page, "aifinops_roi_ratio")
    assert ("legal-drafting",) not in ratios
    assert {k[0]: v for k, v in ratios.items()} == {
        name: r["roi_ratio"] for name, r in roi.items() if r["roi_ratio"] is not None
    }
    assert {k[0]: v for k, v in series(page, "aifinops_roi_cost_usd").items()} == {
        name: r["ai_cost_usd"] for name, r in roi.items()
    }
    benefits = series(page, "aifinops_roi_benefit_usd", initiative="fraud-detection")
    assert benefits[("quality",)] == pytest.approx(150 * 35 * f, rel=1e-12)
    assert benefits[("risk",)] == pytest.approx(80_000 * f, rel=1e-12)
    assert benefits[("productivity",)] == 0.0
    # the API answers in days, the series in seconds (the base unit)
    payback = series(page, "aifinops_roi_payback_seconds")[("fraud-detection",)]
    assert payback == fraud["payback_days"] * 86_400


async def test_roi_what_if(finance_demo):
    await finance_demo.refresh()
    client = finance_demo.client

    # ad hoc: $2,000 of productivity against $1,000 of GPUs over 30 days
    body = {
        "benefits": {"hours_saved": 10, "hourly_rate": 100, "headcount": 2},
        "ai_cost": {"gpu_usd": 1000},
        "period_days": 30,
    }
    resp = await client.post("/api/v1/roi/calculate", json=body)
    assert resp.status == 200
    out = await resp.json()
    assert out["roi_ratio"] == 1.0 and out["payback_days"] == pytest.approx(15.0, rel=1e-12)
    assert out["breakdown"] == {"productivity": 2000.0, "quality": 0.0, "risk": 0.0}
    assert out["initiative"] is None and out["reasons"] == []

    # zero cost: undefined, with the reason
    body["ai_cost"] = {}
    out = await (await client.post("/api/v1/roi/calculate", json=body)).json()
    assert out["roi_ratio"] is None and out["payback_days"] == 0.0
    assert any("undefined" in r for r in out["reasons"])

    # a configured initiative with its cost replaced: same benefits and period as configured
    summary = await (await client.get("/api/v1/summary")).json()
    fraud = next(r for r in summary["roi"] if r["initiative"] == "fraud-detection")
    out = await (
        await client.post(
            "/api/v1/roi/calculate",
            json={"initiative": "fraud-detection", "ai_cost": {"gpu_usd": 5000}},
        )
    ).json()
    assert out["initiative"] == "fraud-detection" and out["tenants"] == ["risk"]
    assert out["benefits_usd"] == pytest.approx(fraud["benefits_usd"], rel=1e-12)
    assert out["roi_ratio"] == pytest.approx((fraud["benefits_usd"] - 5000) / 5000, rel=1e-12)
    assert out["period_start"] == "2025-06-01T00:00:00Z"
    # and without overrides it is the configured figure
    out = await (
        await client.post("/api/v1/roi/calculate", json={"initiative": "fraud-detection"})
    ).json()
    assert out["roi_ratio"] == fraud["roi_ratio"]

    resp = await client.post("/api/v1/roi/calculate", json={"initiative": "nope"})
    assert resp.status == 404
    assert (await resp.json())["error"] == {
        "code": "not_found",
        "message": "no initiative named 'nope'",
        "field": "initiative",
    }
