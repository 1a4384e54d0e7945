"""AI FinOps / Executive: spend this month against budgets, month-end forecast, ROI per
initiative, idle GPU cost and the largest savings found."""

from __future__ import annotations

from .panels import (
    BUDGET_STEPS,
    BY_TENANT,
    CLUSTER_LABEL,
    IDLE_COST_STEPS,
    PERCENT,
    SCOPE_ALL,
    USD,
    Json,
    bargauge,
    dashboard,
    max_by,
    sel,
    stat,
    table,
    timeseries,
)
from .rules import (
    BURN_RATE,
    FORECAST_RATIO,
    MTD,
    TENANT_COST_RATE,
    TENANT_IDLE_COST,
)


def build() -> Json:
    mtd = sel(MTD)
    rate = sel(TENANT_COST_RATE)

    def budget(metric: str) -> str:
        """A per-(tenant, scope) series, scope all."""
        return max_by("tenant", sel(metric, SCOPE_ALL))

    def budget_usd(metric: str) -> str:
        """A scope-all money family (one per scope: no scope label)."""
        return max_by("tenant", sel(metric))

    roi = max_by("initiative", sel("aifinops_roi_ratio"))
    savings = max_by("kind, tenant", sel("aifinops_recommendation_savings_usd_per_month"))
    headline = [
        stat(
            "Spend this month",
            "Month-to-date spend of every tenant, idle and unallocated included (calendar "
            "month in the finance time zone).",
            f"sum({mtd})",
            USD,
        ),
        stat(
            "Month-end forecast (budgeted tenants)",
            "Sum of the month-end spend forecasts of the tenants with an all-resources budget.",
            "sum(" + max_by("tenant", sel("aifinops_tenant_budget_forecast_usd")) + ")",
            USD,
        ),
        stat(
            "Cost rate now (USD/h)",
            "Whole-cluster cost rate as billed (basis allocation).",
            f"sum({rate})",
            USD,
        ),
        stat(
            "Idle GPU cost (USD/h)",
            "Cost rate of allocated GPUs that stayed idle for the whole idle window.",
            f"sum({sel(TENANT_IDLE_COST)})",
            USD,
            thresholds=IDLE_COST_STEPS,
        ),
        stat(
            "Savings found (USD/month)",
            "Estimated monthly savings of all recommendations (idle GPUs, right-sizing, spot, "
            "model switch); kinds may overlap.",
            f"sum({savings})",
            USD,
        ),
        stat(
            "Budgets at or over 100%",
            "Tenant budgets (all scopes) whose month-to-date spend reached the amount.",
            "sum(" + max_by("tenant, scope", sel("aifinops_budget_used_ratio")) + " >= bool 1)",
            "none",
            thresholds=(("red", 1),),
        ),
    ]
    used = bargauge(
        "Budget used this month",
        "Month-to-date spend / monthly budget (scope all) per tenant; warning at 80%, critical "
        "at 100% unless configured otherwise.",
        budget("aifinops_budget_used_ratio"),
        BY_TENANT,
        PERCENT,
        width=10,
        thresholds=BUDGET_STEPS,
        max_value=1.2,
    )
    versus = table(
        "Spend vs budget per tenant",
        "This month's spend, budget (scope all), month-end forecast, forecast / budget, burn "
        "rate (1 = on pace to spend exactly the budget) and the time until it is exhausted.",
        [
            (mtd, "Spend this month", USD),
            (budget_usd("aifinops_tenant_budget_usd"), "Budget", USD),
            (budget_usd("aifinops_tenant_budget_forecast_usd"), "Forecast", USD),
            (budget(FORECAST_RATIO), "Forecast / budget", PERCENT),
            (budget(BURN_RATE), "Burn rate", "none"),
            (budget("aifinops_budget_exhaustion_seconds"), "Time to exhaustion", "s"),
        ],
        width=14,
        sort_by="Spend this month",
    )
    mtd_series = timeseries(
        "Month-to-date spend per tenant",
        "Spend since the 1st of the month per tenant.",
        [(mtd, BY_TENANT)],
        USD,
    )
    burn = timeseries(
        "Burn rate per tenant",
        "Budget spent per month at the current cost rate (scope all): above 1 the tenant "
        "overruns if nothing changes.",
        [(sel(BURN_RATE, SCOPE_ALL), BY_TENANT)],
        "none",
        thresholds=(("red", 1),),
    )
    roi_bars = bargauge(
        "ROI per initiative",
        "(benefits - AI cost) / AI cost over each initiative's period; absent while its AI "
        "cost is zero.",
        roi,
        "{{initiative}} {{" + CLUSTER_LABEL + "}}",
        PERCENT,
        width=8,
        thresholds=(("red", None), ("green", 0)),
    )
    roi_table = table(
        "AI cost and benefit per initiative",
        "Measured AI cost (GPU, tokens, other infrastructure) and the configured benefits over "
        "the initiative's period.",
        [
            (max_by("initiative", sel("aifinops_roi_cost_usd")), "AI cost", USD),
            (
                f"sum by ({CLUSTER_LABEL}, initiative) ("
                + max_by("initiative, kind", sel("aifinops_roi_benefit_usd"))
                + ")",
                "Benefit",
                USD,
            ),
            (roi, "ROI", PERCENT),
        ],
        width=8,
        sort_by="ROI",
    )
    idle = bargauge(
        "Idle GPU cost per tenant (USD/h)",
        "Cost rate of each tenant's idle GPUs, all GPU models.",
        f"sort_desc(sum by (tenant) ({sel(TENANT_IDLE_COST)}))",
        "{{tenant}}",
        USD,
        width=8,
        thresholds=IDLE_COST_STEPS,
    )
    top_savings = table(
        "Top savings (USD/month)",
        "The ten largest savings found, by kind and tenant (details: GET /api/v1/recommendations).",
        [(f"topk(10, {savings})", "Saving per month", USD)],
        sort_by="Saving per month",
    )
    per_tenant = timeseries(
        "Cost rate per tenant (USD/h)",
        "Cost rate as billed (basis allocation), idle and unallocated included: the stack adds "
        "up to the cluster's cost.",
        [(f"sum by (tenant) ({rate})", "{{tenant}}")],
        USD,
        stacked=True,
    )
    return dashboard(
        "aifinops-executive",
        "AI FinOps / Executive",
        "Spend this month against budgets, month-end forecast, ROI per initiative, idle GPU "
        "cost and the largest savings found.",
        [
            (None, [headline]),
            ("Budgets", [[used, versus], [mtd_series, burn]]),
            ("Value and waste", [[roi_bars, roi_table, idle], [top_savings, per_tenant]]),
        ],
        time_from="now-7d",
    )
