"""AI FinOps / GPU efficiency: GPU utilization per tenant and GPU model, idle GPUs and their
cost, the GPU cost on the allocation and usage bases, and how shared GPUs' dollars were split
(docs/shared-gpus.md)."""

from __future__ import annotations

from .panels import (
    BY_TENANT,
    EFFICIENCY_LOW,
    EFFICIENCY_STEPS,
    GPU,
    PERCENT,
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
    COST_RATE,
    EFFICIENCY,
    GPUS,
    GPUS_USED,
    IDLE_COST,
    IDLE_GPUS,
    SPLIT_COST,
    SPLIT_SHARE,
    TENANT_EFFICIENCY,
    TENANT_IDLE_COST,
    USAGE_COST_RATE,
)


def build() -> Json:
    gpus, used, idle_gpus = sel(GPUS), sel(GPUS_USED), sel(IDLE_GPUS)
    unused = max_by("tenant, gpu_model", sel("aifinops_tenant_gpu_unused_cost_usd_per_hour"))
    headline = [
        stat(
            "GPUs allocated",
            "Whole-GPU equivalents allocated to pods.",
            f"sum({gpus})",
            "short",
            decimals=1,
        ),
        stat(
            "GPUs used",
            "Allocated GPU-equivalents x measured utilization.",
            f"sum({used})",
            "short",
            decimals=1,
        ),
        stat(
            "GPU efficiency",
            "Used / allocated GPU-equivalents over the selected clusters.",
            f"sum({used}) / sum({gpus})",
            PERCENT,
            thresholds=EFFICIENCY_STEPS,
        ),
        stat(
            "Idle GPUs",
            "Allocated GPUs below the idle threshold for the whole idle window.",
            f"sum({idle_gpus})",
            "short",
            decimals=1,
        ),
        stat(
            "Idle GPU cost (USD/h)",
            "Cost rate of the idle GPUs.",
            f"sum({sel(TENANT_IDLE_COST)})",
            USD,
        ),
        stat(
            "Unused GPU cost (USD/h)",
            "The unused share of allocated GPUs, idle or not: what basis usage books to __idle__.",
            f"sum({unused})",
            USD,
        ),
    ]
    per_tenant = timeseries(
        "GPU efficiency per tenant",
        "Used / allocated GPU-equivalents per tenant, all GPU models.",
        [(sel(TENANT_EFFICIENCY), BY_TENANT)],
        PERCENT,
        thresholds=EFFICIENCY_LOW,
    )
    per_model = bargauge(
        "GPU efficiency per tenant and GPU model",
        "Now, lowest first.",
        f"sort({sel(EFFICIENCY)})",
        "{{tenant}} · {{gpu_model}}",
        PERCENT,
        thresholds=EFFICIENCY_STEPS,
        max_value=1,
    )
    allocated_used = timeseries(
        "Allocated vs used GPUs by GPU model",
        "GPU-equivalents allocated and used per GPU model.",
        [
            (f"sum by (gpu_model) ({gpus})", "{{gpu_model}} allocated"),
            (f"sum by (gpu_model) ({used})", "{{gpu_model}} used"),
        ],
        "short",
    )
    idle_by_model = timeseries(
        "Idle GPUs by GPU model",
        "GPUs idle for the whole idle window per GPU model.",
        [(f"sum by (gpu_model) ({idle_gpus})", "{{gpu_model}}")],
        "short",
    )
    idle_cost = timeseries(
        "Idle GPU cost per tenant (USD/h)",
        "Cost rate of each tenant's idle GPUs; AIFinOpsIdleGPUCostHigh fires above 10 USD/h "
        "for 2h.",
        [(f"sum by (tenant) ({sel(TENANT_IDLE_COST)})", "{{tenant}}")],
        USD,
        stacked=True,
    )
    idle_table = table(
        "Idle GPUs and their cost by GPU model and tenant",
        "Now, most expensive first.",
        [(idle_gpus, "Idle GPUs", "short"), (sel(IDLE_COST), "Cost (USD/h)", USD)],
        sort_by="Cost (USD/h)",
    )
    bases = table(
        "GPU cost per tenant: allocation vs usage (USD/h)",
        "allocation: requested GPUs x hours x price, as billed. usage: each GPU's cost split by "
        "measured use; the unused rest is __idle__.",
        [
            (f"sum by (tenant) ({sel(COST_RATE, GPU)})", "Allocation", USD),
            (f"sum by (tenant) ({sel(USAGE_COST_RATE, GPU)})", "Usage", USD),
        ],
        width=8,
    )
    unused_series = timeseries(
        "Unused GPU cost per tenant (USD/h)",
        "Whose GPUs the usage basis' __idle__ money came from.",
        [(f"sum by (tenant) ({unused})", "{{tenant}}")],
        USD,
        width=8,
        stacked=True,
    )
    prices = table(
        "GPU price per hour",
        "Price per whole GPU-hour per GPU model and where it comes from (opencost, owned, "
        "catalog, override; docs/owned-gpus.md).",
        [(max_by("gpu_model, source", sel("aifinops_gpu_price_usd_per_hour")), "USD/h", USD)],
        width=8,
    )
    by_method = timeseries(
        "GPU spend by split method (USD/h)",
        "How each GPU dollar was split among the pods sharing a device: exclusive, mig, "
        "per_process (dcgm-exporter's per-process figures), hami (HAMi's allocated shares and "
        "live use), request_share, even_split (DCGM's repeated device figure split by request: "
        "a guess). Usage basis.",
        [(f"sum by (method) ({sel(SPLIT_COST)})", "{{method}}")],
        USD,
        width=10,
        stacked=True,
    )
    method_share = table(
        "Share of GPU spend by split method",
        "Now, per cluster; AIFinOpsGPUSpendEvenSplit fires when even_split passes its threshold.",
        [(sel(SPLIT_SHARE), "Share", PERCENT)],
        width=6,
        sort_by="Share",
    )
    tenant_method = table(
        "GPU spend per tenant by split method (USD/h)",
        "Now, usage basis: which tenants' GPU dollars rest on a guess.",
        [
            (
                max_by(
                    "tenant, method",
                    sel("aifinops_tenant_usage_basis_gpu_cost_by_method_usd_per_hour"),
                ),
                "USD/h",
                USD,
            )
        ],
        width=8,
        pivot=("tenant", "method"),
    )
    return dashboard(
        "aifinops-gpu-efficiency",
        "AI FinOps / GPU efficiency",
        "GPU utilization per tenant and GPU model, idle GPUs and their cost, the GPU cost on "
        "the allocation and usage bases, and how shared GPUs' dollars were split.",
        [
            (None, [headline]),
            ("Utilization", [[per_tenant, per_model], [allocated_used, idle_by_model]]),
            ("Idle GPU cost", [[idle_cost, idle_table], [bases, unused_series, prices]]),
            ("Spend by split method", [[by_method, method_share, tenant_method]]),
        ],
    )
