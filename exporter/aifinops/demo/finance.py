"""The demo's finance configuration (budgets, initiatives, routing workloads,
recommendations) and the simulator's own answer key for month-to-date spend.

Budgets are sized from the simulator's month-to-date spend at start-up, so every budget state
shows whatever the day of the month: search, platform and the global budget are ``ok``, the
data team's GPU budget is ``ok``, risk is at 85 % (``warning``), research at 95 % of a budget
whose critical threshold is 90 % (``critical``), vision at 125 % (``exceeded``), and chatbot
has a ``tokens`` budget. As the demo runs the spend grows and the states move on, as they
would. Initiatives cover a positive ROI (support assistant, fraud detection), a negative one
(search relevance) and an undefined one (legal drafting: its tenant has no cost). Routing
workloads use the demo's LLM traffic (``demo/llm.py``): chatbot's Claude traffic, search's
gpt-4o traffic and ads' gpt-4.1-mini traffic.

Nothing here imports the exporter's model: the month-to-date figures come from the
simulator's ground truth (:meth:`SimCluster.ground_truth`) over the same daily sets the fake
OpenCost serves.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aifinops.demo.cluster import RESOURCES, SimCluster
from aifinops.demo.cluster.opencost import pod_charges
from aifinops.demo.llm import SELF_HOSTED_MODEL

DAY_SECONDS = 86400.0

# (tenant, scope, used ratio at start-up, thresholds): the budget is MTD / ratio.
BUDGET_PLAN: tuple[tuple[str, str, float, dict[str, float]], ...] = (
    ("search", "all", 0.5, {}),
    ("risk", "all", 0.85, {}),
    ("research", "all", 0.95, {"warning": 0.8, "critical": 0.9}),
    ("vision", "all", 1.25, {}),
    ("data", "gpu", 0.6, {}),
    ("platform", "all", 0.3, {}),
    ("__all__", "all", 0.7, {}),
)
CHATBOT_TOKENS_BUDGET_USD = 1500.0


def month_start(now: float, tz: str) -> float:
    """Unix seconds of local midnight on the 1st of ``now``'s month in ``tz``."""
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    return datetime(local.year, local.month, 1, tzinfo=ZoneInfo(tz)).timestamp()


def sim_daily_costs(
    sim: SimCluster, start: float, end: float, resources: tuple[str, ...] = RESOURCES
) -> list[tuple[float, float, dict[str, float]]]:
    """``(set start, set end, USD per tenant)`` for 24-hour sets from ``start`` to ``end``
    (the last one partial), allocation basis, the given resources: the ground truth of the
    fake OpenCost's ``step=1d`` answer."""
    out: list[tuple[float, float, dict[str, float]]] = []
    t = start
    while t < end:
        e = min(t + DAY_SECONDS, end)
        hours = (e - t) / 3600.0
        gt = sim.ground_truth(e, hours)
        usd: dict[str, list[float]] = defaultdict(list)
        for (basis, tenant, resource), rate in gt.cost.items():
            if basis == "allocation" and resource in resources:
                usd[tenant].append(rate * hours)
        out.append((t, e, {k: math.fsum(v) for k, v in usd.items()}))
        t += DAY_SECONDS
    return out


def sim_month_to_date(
    sim: SimCluster, now: float, tz: str = "UTC", resources: tuple[str, ...] = RESOURCES
) -> dict[str, float]:
    """Infrastructure USD per tenant (sentinels included) since the month start in ``tz``,
    from the simulator's ground truth."""
    parts: dict[str, list[float]] = defaultdict(list)
    for _, _, usd in sim_daily_costs(sim, month_start(now, tz), math.floor(now), resources):
        for tenant, v in usd.items():
            parts[tenant].append(v)
    return {t: math.fsum(v) for t, v in parts.items()}


def sim_period_usage(
    sim: SimCluster, start: float, end: float
) -> tuple[dict[str, float], dict[str, float]]:
    """The answer key of a past period ``[start, end)`` in the fake OpenCost's daily sets:
    ``(USD per tenant, GPU-hours per tenant)``, sentinels left out of the GPU-hours (the
    idle row's are capacity, not a pod's). USD from :func:`sim_daily_costs`; GPU-hours from
    the pod runs themselves (requested GPUs × hours run), not from the served JSON."""
    usd: dict[str, list[float]] = defaultdict(list)
    for _, _, day in sim_daily_costs(sim, start, end):
        for tenant, v in day.items():
            usd[tenant].append(v)
    gpu_hours: dict[str, list[float]] = defaultdict(list)
    t = start
    while t < end:
        e = min(t + DAY_SECONDS, end)
        for charge in pod_charges(sim, e, (e - t) / 3600.0):
            if charge.run.pod.gpu_count:
                gpu_hours[charge.tenant].append(charge.run.pod.gpu_count * charge.hours)
        t = e
    return (
        {k: math.fsum(v) for k, v in usd.items()},
        {k: math.fsum(v) for k, v in gpu_hours.items()},
    )


def budgets_config(sim: SimCluster, now: float, tz: str = "UTC") -> dict[str, Any]:
    """The ``budgets:`` section sized from the month to date at ``now`` (see the module
    docstring)."""
    mtd_all = sim_month_to_date(sim, now, tz)
    mtd_gpu = sim_month_to_date(sim, now, tz, ("gpu",))
    total = math.fsum(mtd_all.values())
    tenants: list[dict[str, Any]] = []
    for tenant, scope, ratio, thresholds in BUDGET_PLAN:
        if tenant == "__all__":
            spend = total
        else:
            spend = (mtd_gpu if scope == "gpu" else mtd_all).get(tenant, 0.0)
        amount = round(max(spend / ratio, 1.0), 2)
        tenants.append({"tenant": tenant, "amount_usd": amount, "scope": scope, **thresholds})
    tenants.append(
        {"tenant": "chatbot", "amount_usd": CHATBOT_TOKENS_BUDGET_USD, "scope": "tokens"}
    )
    return {"time_zone": tz, "tenants": tenants}


INITIATIVES: list[dict[str, Any]] = [
    {
        "name": "support-assistant",
        "tenants": ["chatbot"],
        "benefits": {"hours_saved": 40, "hourly_rate": 55, "headcount": 30},
        "other_infra_cost_usd": 1200,
    },
    {
        "name": "fraud-detection",
        "tenants": ["risk"],
        "benefits": {
            "incidents_prevented": 2,
            "avg_incident_cost": 40000,
            "error_reduction_rate": 150,
            "avg_error_cost": 35,
        },
    },
    {
        "name": "search-relevance",
        "tenants": ["search"],
        "benefits": {"error_reduction_rate": 900, "avg_error_cost": 4.5},
    },
    {
        # Its tenant has no cost in the demo: ROI is undefined (the series is absent).
        "name": "legal-drafting",
        "tenants": ["legal"],
        "benefits": {"hours_saved": 10, "hourly_rate": 120, "headcount": 4},
    },
]

ROUTING: dict[str, Any] = {
    "workloads": [
        {
            "name": "support-chat",
            "tenant": "chatbot",
            "current_model": "claude-sonnet-4-5",
            "token_mix": {"input": 0.75, "output": 0.25},
            "weights": {"cost": 0.5, "quality": 0.3, "latency": 0.2},
            "constraints": {"min_quality": 0.8, "max_p95_latency_seconds": 8.0},
            "candidates": [
                {
                    "model": "claude-sonnet-4-5",
                    "provider": "anthropic",
                    "quality": 0.93,
                    "p95_latency_seconds": 6.0,
                },
                {
                    "model": "gpt-4o",
                    "provider": "openai",
                    "quality": 0.9,
                    "p95_latency_seconds": 4.5,
                },
                {
                    "model": "gpt-4.1-mini",
                    "provider": "openai",
                    "quality": 0.84,
                    "p95_latency_seconds": 2.5,
                },
                {
                    "model": SELF_HOSTED_MODEL,
                    "provider": "vllm",
                    "quality": 0.74,
                    "p95_latency_seconds": 1.8,
                },
            ],
        },
        {
            "name": "search-answers",
            "tenant": "search",
            "current_model": "gpt-4o",
            "token_mix": {"input": 0.8, "output": 0.2},
            "weights": {"cost": 0.6, "quality": 0.3, "latency": 0.1},
            "constraints": {"min_quality": 0.75},
            "candidates": [
                {
                    "model": "gpt-4o",
                    "provider": "openai",
                    "quality": 0.9,
                    "p95_latency_seconds": 4.0,
                },
                {
                    "model": "gpt-4o-mini",
                    "provider": "openai",
                    "quality": 0.84,
                    "p95_latency_seconds": 2.0,
                },
                {
                    "model": SELF_HOSTED_MODEL,
                    "provider": "vllm",
                    "quality": 0.8,
                    "p95_latency_seconds": 1.5,
                },
            ],
        },
        {
            "name": "ads-copy",
            "tenant": "ads",
            "current_model": "gpt-4.1-mini",
            "constraints": {"min_quality": 0.8, "allowed_providers": ["openai"]},
            "candidates": [
                {
                    "model": "gpt-4.1-mini",
                    "provider": "openai",
                    "quality": 0.85,
                    "p95_latency_seconds": 2.2,
                },
                {
                    "model": "gpt-4.1-nano",
                    "provider": "openai",
                    "quality": 0.78,
                    "p95_latency_seconds": 1.2,
                },
                {
                    "model": "claude-haiku-4-5",
                    "provider": "anthropic",
                    "quality": 0.86,
                    "p95_latency_seconds": 2.0,
                },
            ],
        },
    ]
}

RECOMMENDATIONS: dict[str, Any] = {
    "min_saving_usd_per_month": 0,
    "rightsize": {
        "headroom": 0.8,
        "gpus": [
            {"name": "NVIDIA H100 80GB HBM3", "compute": 2.0, "memory_gb": 80},
            {
                "name": "NVIDIA A100-SXM4-80GB",
                "compute": 1.0,
                "memory_gb": 80,
                "mig_profiles": ["1g.10gb", "2g.20gb", "3g.40gb"],
            },
            {"name": "NVIDIA L4", "compute": 0.35, "memory_gb": 24},
        ],
    },
    "spot": {"label_key": "aifinops.io/fault-tolerant", "label_value": "true"},
}


def finance_config(sim: SimCluster, now: float, tz: str = "UTC") -> dict[str, Any]:
    """The demo's ``budgets``, ``initiatives``, ``routing`` and ``recommendations``
    configuration sections at ``now`` (merge them into the demo configuration)."""
    return {
        "budgets": budgets_config(sim, now, tz),
        "initiatives": [dict(i) for i in INITIATIVES],
        "routing": ROUTING,
        "recommendations": RECOMMENDATIONS,
    }
