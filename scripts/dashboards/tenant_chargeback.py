"""AI FinOps / Tenant chargeback: one tenant's cost by resource and by model (rate, daily,
30-day and month-to-date spend, allocation vs usage basis, tokens)."""

from __future__ import annotations

from .panels import (
    BUDGET_STEPS,
    BY_MODEL,
    CLUSTER_LABEL,
    EFFICIENCY_LOW,
    PERCENT,
    SCOPE_ALL,
    TENANT,
    USD,
    Json,
    dashboard,
    max_by,
    piechart,
    sel,
    stat,
    table,
    timeseries,
)
from .rules import (
    COST_1D,
    COST_RATE,
    EFFICIENCY,
    IDLE_COST,
    IDLE_GPUS,
    MTD,
    TENANT_COST_1D,
    TENANT_COST_30D,
    TENANT_COST_RATE,
    TENANT_USAGE_COST_RATE,
    TOKEN_COST,
    TOKENS,
    USAGE_COST_1D,
)


def build() -> Json:
    tenant_rate = sel(TENANT_COST_RATE, TENANT)
    headline = [
        stat(
            "Cost rate now (USD/h)",
            "The tenant's cost rate as billed (basis allocation).",
            f"sum({tenant_rate})",
            USD,
        ),
        stat(
            "Spend this month",
            "Month-to-date spend (calendar month in the finance time zone).",
            f"sum({sel(MTD, TENANT)})",
            USD,
        ),
        stat(
            "Spend last 24 h",
            "Dollars accrued over the last 24 hours (basis allocation).",
            f"sum({sel(TENANT_COST_1D, TENANT)})",
            USD,
        ),
        stat(
            "Spend last 30 days",
            "Dollars accrued over the last 30 days (basis allocation).",
            f"sum({sel(TENANT_COST_30D, TENANT)})",
            USD,
        ),
        stat(
            "Share of cluster cost",
            "The tenant's part of the cost rate of the selected clusters (basis allocation).",
            f"sum({tenant_rate}) / sum({sel(TENANT_COST_RATE)})",
            PERCENT,
        ),
        stat(
            "Budget used (all resources)",
            "Month-to-date spend / monthly budget, scope all.",
            f"max({sel('aifinops_budget_used_ratio', TENANT, SCOPE_ALL)})",
            PERCENT,
            thresholds=BUDGET_STEPS,
        ),
    ]
    by_resource = timeseries(
        "Cost rate by resource (USD/h)",
        "gpu, cpu, ram, storage, network, shared and tokens (API token dollars; a self-hosted "
        "model's cost is in gpu, cpu and ram).",
        [(f"sum by (resource) ({sel(COST_RATE, TENANT)})", "{{resource}}")],
        USD,
        stacked=True,
    )
    range_spend = piechart(
        "Spend by resource over the time range",
        "Dollars accrued in the dashboard's time range, per resource.",
        "sum by (resource) ("
        + max_by(
            "tenant, resource",
            f"increase({sel('aifinops_tenant_cost_usd_total', TENANT)}[$__range])",
        )
        + ")",
        "{{resource}}",
        USD,
        width=6,
    )
    last_day = table(
        "Chargeback last 24 h (USD)",
        "Dollars over the last 24 hours per resource on both bases: allocation (as billed) and "
        "usage (GPU cost by measured use).",
        [
            (f"sum by (resource) ({sel(COST_1D, TENANT)})", "Allocation", USD),
            (f"sum by (resource) ({sel(USAGE_COST_1D, TENANT)})", "Usage", USD),
        ],
        width=6,
    )
    bases = timeseries(
        "Allocation vs usage basis (USD/h)",
        "The tenant's cost rate as billed (allocation) and as used (usage: the unused GPU share "
        "goes to __idle__).",
        [
            (f"sum({sel(TENANT_COST_RATE, TENANT)})", "allocation"),
            (f"sum({sel(TENANT_USAGE_COST_RATE, TENANT)})", "usage"),
        ],
        USD,
    )
    efficiency = timeseries(
        "GPU efficiency by GPU model",
        "Used / allocated GPU-equivalents of the tenant per GPU model.",
        [(sel(EFFICIENCY, TENANT), "{{gpu_model}} {{" + CLUSTER_LABEL + "}}")],
        PERCENT,
        thresholds=EFFICIENCY_LOW,
    )
    token_cost = timeseries(
        "Token cost by model (USD/h)",
        "Token cost rate over the last hour per model: API models at list price, self-hosted "
        "models at their measured price.",
        [(f"sum by (model, provider) ({sel(TOKEN_COST, TENANT)})", BY_MODEL)],
        USD,
        stacked=True,
    )
    tokens = timeseries(
        "Tokens per second by model and type",
        "Tokens per second over the last hour per model and token type.",
        [(f"sum by (model, token_type) ({sel(TOKENS, TENANT)})", "{{model}} {{token_type}}")],
        "short",
    )
    token_spend = table(
        "Token spend by model over the time range (USD)",
        "Dollars of tokens in the dashboard's time range per model.",
        [
            (
                "sort_desc(sum by (model, provider) ("
                + max_by(
                    "tenant, model, provider, token_type",
                    f"increase({sel('aifinops_token_cost_usd_total', TENANT)}[$__range])",
                )
                + "))",
                "USD",
                USD,
            )
        ],
        sort_by="USD",
    )
    idle = table(
        "Idle GPUs held",
        "The tenant's GPUs idle for the whole idle window and their cost rate.",
        [
            (sel(IDLE_GPUS, TENANT), "Idle GPUs", "short"),
            (sel(IDLE_COST, TENANT), "Cost (USD/h)", USD),
        ],
        sort_by="Cost (USD/h)",
    )
    return dashboard(
        "aifinops-tenant-chargeback",
        "AI FinOps / Tenant chargeback",
        "One tenant's cost by resource and by model: rate, daily, 30-day and month-to-date "
        "spend, allocation vs usage basis, tokens.",
        [
            (None, [headline]),
            ("Cost by resource", [[by_resource, range_spend, last_day], [bases, efficiency]]),
            ("Cost by model", [[token_cost, tokens], [token_spend, idle]]),
        ],
        tenant_variable=True,
    )
