"""Chargeback from the books of record through the real app on the demo fakes: this month's
equals the summary's month to date to the cent from the first refresh on, last month answers
from OpenCost's history (checked against the simulator's answer key, not the model), and
FOCUS GPU rows are in GPU-hours."""

from __future__ import annotations

import csv
import io
import math
from decimal import Decimal

from aifinops.demo.finance import sim_period_usage
from aifinops.exposition.catalog import IDLE_TENANT, UNALLOCATED_TENANT
from aifinops.model.chargeback import parse_period
from tests.web.api.conftest import T0

SENTINELS = {IDLE_TENANT, UNALLOCATED_TENANT}


def tenant_sums(rows: list[dict[str, object]]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for r in rows:
        tenant = str(r["tenant"])
        out[tenant] = out.get(tenant, Decimal(0)) + Decimal(str(r["amount_usd"]))
    return out


async def test_this_months_chargeback_is_the_month_to_date_after_one_refresh(finance_demo):
    await finance_demo.refresh()  # the first refresh after start
    client = finance_demo.client
    budgets = await (await client.get("/api/v1/budgets")).json()
    summary = await (await client.get("/api/v1/summary")).json()
    cb = await (await client.get("/api/v1/chargeback")).json()
    assert cb["period"] == "2025-06" and cb["source"] == "opencost"
    mtd = budgets["tenant_month_to_date_usd"]
    assert mtd and math.fsum(mtd.values()) > 1000  # weeks of the demo cluster, not a minute
    total = Decimal(math.fsum(mtd.values())).quantize(Decimal("0.01"))
    assert Decimal(str(cb["total_usd"])) == total
    assert round(summary["spend_month_to_date_usd"], 2) == float(total)
    # per tenant: the rounded rows of a tenant are within a cent per row of its figure
    sums = tenant_sums(cb["rows"])
    assert sums.keys() == {t for t, v in mtd.items() if v}
    for tenant, usd in mtd.items():
        rows = sum(1 for r in cb["rows"] if r["tenant"] == tenant)
        assert abs(sums[tenant] - Decimal(usd)) <= Decimal("0.01") * rows, tenant
    # the charge period is the data's: from the month start (OpenCost's first set) to now
    assert cb["charge_period_start"] == "2025-06-01T00:00:00Z"
    assert cb["charge_period_end"] == "2025-06-15T15:06:40Z"

    # a refresh later, still equal (OpenCost's sets plus the rates since they were read)
    finance_demo.clock.now = T0 + 60
    await finance_demo.refresh()
    budgets = await (await client.get("/api/v1/budgets")).json()
    cb = await (await client.get("/api/v1/chargeback?period=2025-06")).json()
    want = Decimal(math.fsum(budgets["tenant_month_to_date_usd"].values())).quantize(
        Decimal("0.01")
    )
    assert Decimal(str(cb["total_usd"])) == want


async def test_last_month_answers_from_opencost_with_gpu_hours(finance_demo):
    await finance_demo.refresh()
    client = finance_demo.client
    resp = await client.get("/api/v1/chargeback?period=2025-05")
    assert resp.status == 200, await resp.text()
    cb = await resp.json()
    assert cb["source"] == "opencost"
    assert cb["charge_period_start"] == "2025-05-01T00:00:00Z"
    assert cb["charge_period_end"] == "2025-06-01T00:00:00Z"

    start, end = parse_period("2025-05", "UTC")
    usd, gpu_hours = sim_period_usage(finance_demo.upstreams.sim, start, end)
    got = tenant_sums(cb["rows"])
    assert {t for t, v in usd.items() if round(v, 2)} == set(got)
    for tenant, want in usd.items():
        # OpenCost prints each row to 5 decimals: a month of daily rows stays within cents
        assert abs(float(got.get(tenant, 0)) - want) < 0.05, tenant
    assert abs(float(cb["total_usd"]) - math.fsum(usd.values())) < 0.05

    resp = await client.get("/api/v1/chargeback?period=2025-05&format=focus")
    focus = list(csv.DictReader(io.StringIO(await resp.text())))
    gpu = {r["SubAccountId"]: r for r in focus if r["x_Resource"] == "gpu"}
    assert {t for t in gpu_hours if gpu_hours[t] > 0} <= set(gpu)
    for tenant, hours in gpu_hours.items():
        row = gpu[tenant]
        assert row["PricingUnit"] == row["ConsumedUnit"] == "GPU-Hours"
        assert row["x_QuantitySource"] == "measured"
        assert abs(float(row["PricingQuantity"]) - hours) < 1e-3 * max(1.0, hours), tenant
        assert row["ChargePeriodStart"] == "2025-05-01T00:00:00Z"
        assert row["ChargePeriodEnd"] == "2025-06-01T00:00:00Z"
    units = {r["x_Resource"]: r["PricingUnit"] for r in focus if r["x_Tenant"] not in SENTINELS}
    assert units["cpu"] == "Core-Hours" and units["ram"] == "GiB-Hours"
    assert all(r["BillingAccountId"] == "aifinops" for r in focus)

    # two months back: neither OpenCost's window (history_months=1) nor the ledger holds it
    resp = await client.get("/api/v1/chargeback?period=2025-04")
    assert resp.status == 404


async def test_billing_account_and_cluster_are_configurable(aiohttp_client):
    from tests.web.api.conftest import start_finance_demo

    demo = await start_finance_demo(
        aiohttp_client,
        chargeback={"billing_account_id": "acct-42", "cluster": "prod-eu"},
    )
    try:
        await demo.refresh()
        resp = await demo.client.get("/api/v1/chargeback?format=focus")
        focus = list(csv.DictReader(io.StringIO(await resp.text())))
        assert focus and {r["BillingAccountId"] for r in focus} == {"acct-42"}
        assert {r["x_Cluster"] for r in focus} == {"prod-eu"}
    finally:
        await demo.upstreams.close()
