"""Recommendations (filters, bounds, ground truth) and chargeback (reconciliation with the
per-tenant counters, CSV and FOCUS formats) through the real app."""

from __future__ import annotations

import csv
import io
import math
from decimal import Decimal

import pytest

from aifinops.exposition.chargeback_files import CSV_COLUMNS, FOCUS_COLUMNS
from tests.web.api.conftest import T0
from tests.web.conftest import series

HOURS_PER_MONTH = 730.0

# One counter family per basis (sum-safe families).
BASIS_WORD = {"allocation": "", "usage": "usage_basis_"}


async def test_recommendations_match_the_ground_truth_and_stay_in_bounds(finance_demo):
    await finance_demo.refresh()
    finance_demo.clock.now = T0 + 960  # past the 900 s idle window
    await finance_demo.refresh()
    page = await finance_demo.metrics()
    client = finance_demo.client
    body = await (await client.get("/api/v1/recommendations")).json()
    recs = body["recommendations"]
    assert body["count"] == len(recs) > 0
    assert {r["kind"] for r in recs} == {"idle_gpu", "rightsize", "spot", "budget_at_risk"}
    savings = [r["saving_usd_per_month"] for r in recs]
    assert savings == sorted(savings, reverse=True)

    # savings never exceed their source, and a tenant's never exceed its monthly spend
    spend: dict[str, float] = {}
    for (_, tenant), rate in series(page, "aifinops_tenant_cost_usd_per_hour").items():
        spend[tenant] = spend.get(tenant, 0.0) + rate * HOURS_PER_MONTH
    per_tenant: dict[str, float] = {}
    for r in recs:
        assert 0.0 <= r["saving_usd_per_month"] <= r["source_cost_usd_per_month"] + 1e-9
        per_tenant[r["tenant"]] = per_tenant.get(r["tenant"], 0.0) + r["saving_usd_per_month"]
    for tenant, total in per_tenant.items():
        if tenant != "__all__":
            assert total <= spend[tenant] * (1 + 1e-12), tenant

    # idle GPUs: the idle cost rate x 730 h (unless a tenant's savings had to be scaled)
    gt = finance_demo.sim.ground_truth(T0 + 960)
    idle = {(r["tenant"], r["subject"]): r for r in recs if r["kind"] == "idle_gpu"}
    assert set(idle) == {k for k, v in gt.idle_gpu_cost.items() if v}
    for key, r in idle.items():
        factor = r["evidence"].get("scaled_by", 1.0)
        assert r["saving_usd_per_month"] == pytest.approx(
            gt.idle_gpu_cost[key] * HOURS_PER_MONTH * factor, rel=1e-3
        )

    # spot: the fault-tolerant batch job's GPU rate x (1 - spot / on-demand) x 730 h
    (spot,) = [r for r in recs if r["kind"] == "spot"]
    rows = finance_demo.sim.opencost_allocation(T0 + 960, 1.0)["data"][0]
    batch = [v for k, v in rows.items() if k.startswith("team-vision/nightly-eval")]
    gpu_rate = math.fsum(v["gpuCost"] for v in batch)
    assert spot["tenant"] == "vision"
    factor = spot["evidence"].get("scaled_by", 1.0)
    assert spot["saving_usd_per_month"] == pytest.approx(
        gpu_rate * (1 - 3.20 / 6.88) * HOURS_PER_MONTH * factor, rel=1e-9
    )
    assert spot["confidence"] == "low"  # one hour of evidence

    # /metrics carries the same savings per (kind, tenant)
    by_kind: dict[tuple[str, str], float] = {}
    for r in recs:
        key = (r["kind"], r["tenant"])
        by_kind[key] = by_kind.get(key, 0.0) + r["saving_usd_per_month"]
    got = series(page, "aifinops_recommendation_savings_usd_per_month")
    assert got.keys() == by_kind.keys()
    for key, value in by_kind.items():
        assert got[key] == pytest.approx(value, rel=1e-12)

    # filters: tenant, kind, minimum saving; an unknown tenant is an empty list
    out = await (await client.get("/api/v1/recommendations?tenant=vision")).json()
    assert out["recommendations"] and {r["tenant"] for r in out["recommendations"]} == {"vision"}
    out = await (await client.get("/api/v1/recommendations?kind=idle_gpu")).json()
    assert len(out["recommendations"]) == len(idle)
    out = await (await client.get("/api/v1/recommendations?min_saving=500")).json()
    assert out["recommendations"]
    assert all(r["saving_usd_per_month"] >= 500 for r in out["recommendations"])
    assert out["count"] == sum(1 for s in savings if s >= 500)
    out = await (await client.get("/api/v1/recommendations?tenant=nobody")).json()
    assert out == {**out, "count": 0, "recommendations": [], "total_saving_usd_per_month": 0}

    # the summary's top savings are the first five with a saving
    summary = await (await client.get("/api/v1/summary")).json()
    assert [r["saving_usd_per_month"] for r in summary["top_savings"]] == savings[:5]
    assert summary["idle_cost_usd_per_hour"] == pytest.approx(
        math.fsum(gt.idle_gpu_cost.values()), rel=1e-3
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("kind=nope", "kind"),
        ("min_saving=-1", "min_saving"),
        ("min_saving=abc", "min_saving"),
        ("colour=red", "colour"),
        ("tenant=a&tenant=b", "tenant"),
    ],
)
async def test_recommendations_bad_query(finance_demo, query, field):
    await finance_demo.refresh()
    resp = await finance_demo.client.get(f"/api/v1/recommendations?{query}")
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["code"] == "invalid_request" and err["field"] == field


async def test_chargeback_reconciles_to_the_cent_with_the_counters(finance_demo):
    await finance_demo.refresh()
    finance_demo.clock.now = T0 + 1800
    await finance_demo.refresh()
    page = await finance_demo.metrics()
    client = finance_demo.client
    # The usage basis comes from the exporter's ledger: the counters' increments. (The
    # allocation basis is OpenCost's books: tests/web/api/test_chargeback_books.py.)
    for basis in ("usage",):
        counters = series(page, f"aifinops_tenant_{BASIS_WORD[basis]}cost_usd_total")
        resp = await client.get(f"/api/v1/chargeback?period=2025-06&basis={basis}")
        assert resp.status == 200
        cb = await resp.json()
        assert cb["period"] == "2025-06" and cb["basis"] == basis
        assert cb["source"] == "exporter_ledger"
        assert cb["period_start"] == "2025-06-01T00:00:00Z"
        assert cb["charge_period_end"] == "2025-06-15T15:36:40Z"
        # the ledger holds what this process accrued: from its first refresh, not the 1st
        assert cb["charge_period_start"] == "2025-06-15T15:06:40Z"
        rows = {(r["tenant"], r["resource"]): r["amount_usd"] for r in cb["rows"]}
        want = {(t, r): v for (r, t), v in counters.items() if v}
        assert rows.keys() == want.keys()
        for key, usd in want.items():
            assert abs(Decimal(str(rows[key])) - Decimal(usd)) <= Decimal("0.01"), key
        total = Decimal(math.fsum(want.values())).quantize(Decimal("0.01"))
        assert Decimal(str(cb["total_usd"])) == total
        assert sum(Decimal(str(v)) for v in rows.values()) == total

    # the period defaults to the current month
    default = await (await client.get("/api/v1/chargeback")).json()
    assert default["period"] == "2025-06"

    # sharing idle out keeps the total and leaves no __idle__ row
    shared = await (await client.get("/api/v1/chargeback?period=2025-06&share_idle=true")).json()
    assert shared["total_usd"] == default["total_usd"]
    assert not any(r["tenant"] == "__idle__" for r in shared["rows"])
    assert any(r["allocation"] == "idle_share" for r in shared["rows"])

    # CSV and FOCUS: same rows, same total
    resp = await client.get("/api/v1/chargeback?period=2025-06&format=csv")
    assert resp.headers["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(await resp.text())))
    assert tuple(table[0]) == CSV_COLUMNS
    assert sum(Decimal(r["amount_usd"]) for r in table) == Decimal(str(default["total_usd"]))
    resp = await client.get("/api/v1/chargeback?period=2025-06&format=focus")
    assert 'filename="chargeback-2025-06-focus.csv"' in resp.headers["Content-Disposition"]
    focus = list(csv.DictReader(io.StringIO(await resp.text())))
    assert tuple(focus[0]) == FOCUS_COLUMNS
    assert sum(Decimal(r["BilledCost"]) for r in focus) == Decimal(str(default["total_usd"]))
    assert {r["ServiceCategory"] for r in focus} <= {
        "AI and Machine Learning",
        "Compute",
        "Storage",
        "Networking",
    }
    assert all(r["BillingCurrency"] == "USD" and r["ChargeCategory"] == "Usage" for r in focus)


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("period=2025-13", 400, "period"),
        ("period=June", 400, "period"),
        ("period=2025-06&format=xml", 400, "format"),
        ("period=2025-06&basis=nope", 400, "basis"),
        ("period=2025-06&share_idle=maybe", 400, "share_idle"),
        ("period=2025-06&extra=1", 400, "extra"),
        ("period=2024-01", 404, "period"),
    ],
)
async def test_chargeback_bad_query(finance_demo, query, status, field):
    await finance_demo.refresh()
    resp = await finance_demo.client.get(f"/api/v1/chargeback?{query}")
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["field"] == field
    assert err["code"] == ("not_found" if status == 404 else "invalid_request")


async def test_chargeback_gpu_rows_say_how_each_tenants_dollars_were_split(finance_demo):
    await finance_demo.refresh()
    finance_demo.clock.now = T0 + 1800  # the usage basis' ledger holds an increment
    await finance_demo.refresh()
    page = await finance_demo.metrics()
    # Per tenant, the usage basis' GPU dollars by split method as /metrics publishes them.
    published: dict[str, dict[str, float]] = {}
    family = "aifinops_tenant_usage_basis_gpu_cost_by_method_usd_per_hour"
    for (method, tenant), usd in series(page, family).items():  # labels sorted by name
        published.setdefault(tenant, {})[method] = usd
    # Per tenant the methods sum to its usage-basis GPU rate (charge-back included).
    gpu = series(page, "aifinops_tenant_usage_basis_cost_usd_per_hour", resource="gpu")
    assert {t: math.fsum(m.values()) for t, m in published.items()} == pytest.approx(
        {t: v for (t,), v in gpu.items() if v > 0}
    )
    cb = await (await finance_demo.client.get("/api/v1/chargeback?basis=usage")).json()
    gpu_rows = [r for r in cb["rows"] if r["resource"] == "gpu" and r["allocation"] == "direct"]
    assert gpu_rows and all(r["split_methods"] for r in gpu_rows)
    for r in gpu_rows:
        total = math.fsum(published[r["tenant"]].values())
        want = {m: usd / total for m, usd in published[r["tenant"]].items() if usd > 0}
        assert r["split_methods"] == pytest.approx(want), r["tenant"]
    assert all(r["split_methods"] is None for r in cb["rows"] if r["resource"] != "gpu")
    focus = await (await finance_demo.client.get("/api/v1/chargeback?format=focus")).text()
    cells = [r["x_GpuSplitMethods"] for r in csv.DictReader(io.StringIO(focus))]
    assert any(c.startswith(("exclusive=", "even_split=", "mig=", "per_process=")) for c in cells)
