"""Budgets and month-to-date spend through the real app against the demo cluster: figures
match a hand calculation from the simulator's ground truth, and /metrics and the API agree."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from statistics import median

import pytest

from aifinops.demo.finance import BUDGET_PLAN, month_start, sim_daily_costs, sim_month_to_date
from tests.web.api.conftest import T0
from tests.web.conftest import series

DAY = 86400.0
EXPECTED_STATES = {
    ("search", "all"): "ok",
    ("risk", "all"): "warning",
    ("research", "all"): "critical",
    ("vision", "all"): "exceeded",
    ("data", "gpu"): "ok",
    ("platform", "all"): "ok",
    ("__all__", "all"): "ok",
    ("chatbot", "tokens"): "ok",
}


def theil_sen_forecast(spend: float, daily: dict[int, float], now: float) -> tuple[float, list]:
    """Independent Theil-Sen month-end forecast (UTC): the median of pairwise slopes over the
    full days before today (x = days from today), intercept median(y) - slope * median(x)."""
    xs = sorted(daily)
    slopes = [(daily[b] - daily[a]) / (b - a) for i, a in enumerate(xs) for b in xs[i + 1 :]]
    slope = median(slopes)
    intercept = median(daily[x] for x in xs) - slope * median(xs)
    local = datetime.fromtimestamp(now, UTC)
    elapsed = (now - local.replace(hour=0, minute=0, second=0).timestamp()) / DAY
    days_left = 30 - local.day  # June

    def p(d: int) -> float:
        return max(0.0, intercept + slope * d)

    segments = [(1 - elapsed, p(0) * (1 - elapsed))] + [
        (1.0, p(d)) for d in range(1, days_left + 1)
    ]
    return spend + math.fsum(s for _, s in segments), segments


def days_until(segments: list, extra: float) -> float | None:
    spent = t = 0.0
    for length, dollars in segments:
        if dollars > 0 and spent + dollars >= extra:
            return t + length * (extra - spent) / dollars
        spent += dollars
        t += length
    return None


def daily_history(sim, tenant: str | None, resources: tuple[str, ...], now: float) -> dict:
    """The 28 full days before today as the exporter queries them: {days from today: USD}."""
    start = month_start(now, "UTC") - 14 * DAY  # 28-day lookback, 14 days into the month
    today = math.floor(now / DAY) * DAY
    out = {}
    for s, e, usd in sim_daily_costs(sim, start, math.floor(now), resources):
        if e - s < DAY or s >= today:
            continue
        out[round((s - today) / DAY)] = (
            math.fsum(usd.values()) if tenant is None else usd.get(tenant, 0.0)
        )
    return out


async def test_budgets_match_the_ground_truth_and_the_metrics(finance_demo):
    await finance_demo.refresh()
    sim = finance_demo.sim
    page = await finance_demo.metrics()
    body = await (await finance_demo.client.get("/api/v1/budgets")).json()
    assert body["period"] == "2025-06" and body["time_zone"] == "UTC"
    assert body["month_start"] == "2025-06-01T00:00:00Z"
    budgets = {(b["tenant"], b["scope"]): b for b in body["budgets"]}
    assert {k: b["state"] for k, b in budgets.items()} == EXPECTED_STATES

    mtd = sim_month_to_date(sim, T0)
    mtd_gpu = sim_month_to_date(sim, T0, resources=("gpu",))
    plan = {(t, s): ratio for t, s, ratio, _ in BUDGET_PLAN}
    for (tenant, scope), b in budgets.items():
        if scope == "tokens":  # no LLM traffic in the cluster-only demo
            assert b["spend_usd"] == 0.0 and b["forecast_method"] == "run_rate"
            continue
        if tenant == "__all__":
            want = math.fsum(mtd.values())
        else:
            want = (mtd_gpu if scope == "gpu" else mtd)[tenant]
        assert b["spend_usd"] == pytest.approx(want, rel=1e-12)
        # the demo sized each budget as month to date / its planned ratio
        assert b["budget_usd"] == round(want / plan[(tenant, scope)], 2)
        assert b["used_ratio"] == pytest.approx(want / b["budget_usd"], rel=1e-12)
        resources = (
            ("gpu",) if scope == "gpu" else ("gpu", "cpu", "ram", "storage", "network", "shared")
        )
        history = daily_history(sim, None if tenant == "__all__" else tenant, resources, T0)
        assert len(history) == 28
        forecast, segments = theil_sen_forecast(want, history, T0)
        assert b["forecast_method"] == "theil_sen"
        assert b["forecast_usd"] == pytest.approx(forecast, rel=1e-9)
        if want >= b["budget_usd"]:
            assert b["days_to_exhaustion"] == 0.0
        else:
            expected = days_until(segments, b["budget_usd"] - want)
            if expected is None:
                assert b["days_to_exhaustion"] is None
            else:
                assert b["days_to_exhaustion"] == pytest.approx(expected, rel=1e-9)

    # /metrics says the same, number for number: money in one family per (owner, scope),
    # the ratios per (tenant, scope), the global budget in the aifinops_cluster_* families.
    from aifinops.exposition.catalog import BUDGET_MONEY, BUDGET_RATIOS

    for (owner, scope, what), spec in BUDGET_MONEY.items():
        field = {"budget": "budget_usd", "spend": "spend_usd", "forecast": "forecast_usd"}[what]
        got = {labels.get("tenant", "__all__"): v for labels, v in page.get(spec.name, [])}
        want_api = {
            t: b[field]
            for (t, sc), b in budgets.items()
            if sc == scope and (t == "__all__") == (owner == "cluster")
        }
        assert got == want_api, spec.name
    for (owner, what), spec in BUDGET_RATIOS.items():
        if what == "state":
            continue
        field, unit = {
            "used": ("used_ratio", 1.0),
            "exhaustion": ("days_to_exhaustion", 86_400.0),
            "warning": ("warning", 1.0),
            "critical": ("critical", 1.0),
        }[what]
        got = {
            (labels.get("tenant", "__all__"), labels["scope"]): v
            for labels, v in page.get(spec.name, [])
        }
        want_api = {
            k: b[field] * unit
            for k, b in budgets.items()
            if b[field] is not None and (k[0] == "__all__") == (owner == "cluster")
        }
        assert got == pytest.approx(want_api, rel=1e-12), spec.name
    assert all(
        labels["tenant"] != "__all__"
        for name, samples in page.items()
        if name.startswith("aifinops_budget")
        for labels, _ in samples
    )
    states = {}
    for labels, v in page["aifinops_budget_state"] + page["aifinops_cluster_budget_state"]:
        key = (labels.get("tenant", "__all__"), labels["scope"])
        states.setdefault(key, {})[labels["state"]] = v
    for key, by_state in states.items():
        assert set(by_state) == {"ok", "warning", "critical", "exceeded"}
        assert [s for s, v in by_state.items() if v == 1.0] == [budgets[key]["state"]]
        assert sum(by_state.values()) == 1.0

    # month to date per tenant: API == /metrics == ground truth (sentinels included)
    api_mtd = body["tenant_month_to_date_usd"]
    assert {
        t: v for (t,), v in series(page, "aifinops_tenant_month_to_date_cost_usd").items()
    } == api_mtd
    assert set(api_mtd) == set(mtd)
    for tenant, usd in mtd.items():
        assert api_mtd[tenant] == pytest.approx(usd, rel=1e-12)
    assert "__idle__" in api_mtd and "__unallocated__" in api_mtd


async def test_month_to_date_covers_the_time_since_the_daily_query(finance_demo):
    """Between two month-to-date queries (every 600 s) the current cost rate fills the gap."""
    await finance_demo.refresh()
    finance_demo.clock.now = T0 + 300
    await finance_demo.refresh()
    page = await finance_demo.metrics()
    got = series(page, "aifinops_tenant_month_to_date_cost_usd")
    gt = finance_demo.sim.ground_truth(T0 + 300)
    before = sim_month_to_date(finance_demo.sim, T0)
    for tenant in ("search", "vision", "__idle__"):
        want = before[tenant] + gt.tenant_total("allocation", tenant) * 300 / 3600
        assert got[(tenant,)] == pytest.approx(want, rel=1e-6)
    # past the interval the query runs again and the sets are exact
    finance_demo.clock.now = T0 + 600
    await finance_demo.refresh()
    page = await finance_demo.metrics()
    exact = sim_month_to_date(finance_demo.sim, T0 + 600)
    got = series(page, "aifinops_tenant_month_to_date_cost_usd")
    for tenant, usd in exact.items():
        assert got[(tenant,)] == pytest.approx(usd, rel=1e-12)


async def test_opencost_month_down_leaves_budgets_out_and_says_why(aiohttp_client):
    from tests.web.api.conftest import start_finance_demo

    d = await start_finance_demo(aiohttp_client)
    try:
        d.upstreams.faults.set("opencost", "error500")
        await d.refresh()
        page = await d.metrics()
        assert "aifinops_tenant_month_to_date_cost_usd" not in page
        body = await (await d.client.get("/api/v1/budgets")).json()
        # only the tokens budget can be evaluated without OpenCost
        assert [(b["tenant"], b["scope"]) for b in body["budgets"]] == [("chatbot", "tokens")]
        assert any("opencost_month" in n for n in body["notes"])
        assert series(page, "aifinops_source_up")[("opencost_month",)] == 0.0
    finally:
        await d.upstreams.close()


async def test_tokens_and_charge_back_in_the_month_to_date(full_demo):
    """With LLM traffic: token dollars count for their tenant (and its tokens budget), the
    self-hosted charge-back moves dollars between tenants without creating any."""
    await full_demo.refresh_at(T0 + 60)
    page = await full_demo.refresh_at(T0 + 360)
    sim, llm = full_demo.sim, full_demo.upstreams.llm
    truth = llm.truth(T0 + 360).minus(llm.truth(T0 + 60))
    mtd = {t: v for (t,), v in series(page, "aifinops_tenant_month_to_date_cost_usd").items()}
    gt = sim.ground_truth(T0 + 360)
    infra = (
        math.fsum(sim_month_to_date(sim, T0 + 60).values())
        + math.fsum(gt.cluster.values()) * 300 / 3600
    )
    api = math.fsum(truth.api_cost.values())
    assert math.fsum(mtd.values()) == pytest.approx(infra + api, rel=1e-9)
    spend = series(page, "aifinops_tenant_token_budget_spend_usd", tenant="chatbot")
    assert spend[()] == pytest.approx(truth.tenant_api_cost("chatbot"), rel=1e-9)
    # the serving pods' owner paid less than its own pods cost, the senders more
    before = sim_month_to_date(sim, T0 + 60)
    own = before["platform"] + gt.tenant_total("allocation", "platform") * 300 / 3600
    assert mtd["platform"] < own
