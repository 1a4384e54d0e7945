"""The one list of every series the exporter publishes.

Docs (``docs/metrics.md``), the golden exposition test, the rule tests and the dashboard
tests read from here. Metric policy: a ``stable`` series keeps its name, type and labels
within a major version; an ``experimental`` one may change in a minor version with a
CHANGELOG entry. Labels are bounded (never a user, an email, a request id or a pod name).

Naming: prefix ``aifinops_``; money in US dollars with ``_usd``; rates ``_usd_per_hour``;
0–1 ratios ``_ratio``; counters end in ``_total`` (the ``# TYPE`` line uses the full name,
as the text format 0.0.4 requires).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter"]
Stability = Literal["stable", "experimental"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    stability: Stability = "stable"


def _spec(
    name: str,
    type_: MetricType,
    help_: str,
    labels: tuple[str, ...] = (),
    stability: Stability = "stable",
) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels, stability)


# --- cost per tenant -----------------------------------------------------------------------
TENANT_COST_RATE = _spec(
    "aifinops_tenant_cost_usd_per_hour",
    "gauge",
    "Cost rate per tenant and resource in USD per hour, averaged over the OpenCost window. "
    "Tenants include the sentinels __idle__ and __unallocated__; for each basis the tenants sum "
    "to aifinops_cluster_cost_usd_per_hour.",
    ("tenant", "resource", "basis"),
)
TENANT_COST_TOTAL = _spec(
    "aifinops_tenant_cost_usd_total",
    "counter",
    "Dollars accrued per tenant and resource since the exporter started (rate integrated "
    "between refreshes).",
    ("tenant", "resource", "basis"),
)
CLUSTER_COST_RATE = _spec(
    "aifinops_cluster_cost_usd_per_hour",
    "gauge",
    "Whole-cluster cost rate per resource in USD per hour (the sum every basis reconciles to).",
    ("resource",),
)

# --- GPUs ----------------------------------------------------------------------------------
TENANT_GPUS = _spec(
    "aifinops_tenant_gpus",
    "gauge",
    "GPUs allocated to a tenant's pods, in whole-GPU equivalents (a MIG slice or a time-sliced "
    "share counts as its fraction).",
    ("tenant", "gpu_model"),
)
TENANT_GPUS_USED = _spec(
    "aifinops_tenant_gpus_used",
    "gauge",
    "GPU-equivalents a tenant actually used: allocated fraction x measured utilization.",
    ("tenant", "gpu_model"),
)
TENANT_GPU_EFFICIENCY = _spec(
    "aifinops_tenant_gpu_efficiency_ratio",
    "gauge",
    "Used / allocated GPU-equivalents per tenant (0-1). Absent for tenants with no GPU.",
    ("tenant",),
)
TENANT_GPU_UNUSED_COST = _spec(
    "aifinops_tenant_gpu_unused_cost_usd_per_hour",
    "gauge",
    "The unused share of the GPUs a tenant holds, in USD per hour: under basis=usage this "
    "money is booked to __idle__; this series says whose GPUs it came from.",
    ("tenant", "gpu_model"),
)
IDLE_GPUS = _spec(
    "aifinops_idle_gpus",
    "gauge",
    "Allocated GPUs (whole-GPU equivalents) whose utilization stayed below the idle threshold "
    "for the whole idle window.",
    ("tenant", "gpu_model"),
)
IDLE_GPU_COST = _spec(
    "aifinops_idle_gpu_cost_usd_per_hour",
    "gauge",
    "Cost rate of the idle GPUs in aifinops_idle_gpus, in USD per hour.",
    ("tenant", "gpu_model"),
)
GPU_PRICE = _spec(
    "aifinops_gpu_price_usd_per_hour",
    "gauge",
    "Price per whole GPU-hour in use for a GPU model; source is opencost (derived from its "
    "gpuCost/gpuHours), catalog (bundled price list) or override (configuration).",
    ("gpu_model", "source"),
)

# --- LLM tokens ----------------------------------------------------------------------------
TOKENS = _spec(
    "aifinops_tokens_total",
    "counter",
    "LLM tokens counted since the exporter started, per tenant, model, provider and token type "
    "(input excludes cached input; cached_input is prompt tokens served from a cache). Counter "
    "resets upstream are handled: a restart never makes tokens negative or double.",
    ("tenant", "model", "provider", "token_type"),
    "experimental",
)
TOKEN_COST = _spec(
    "aifinops_token_cost_usd_total",
    "counter",
    "Dollars of those tokens: API models at their price-list price, self-hosted models at "
    "their measured price (that money is already in the tenant's gpu/cpu/ram cost through "
    "charge-back; API token money is resource=tokens).",
    ("tenant", "model", "provider", "token_type"),
    "experimental",
)
MODEL_TOKEN_PRICE = _spec(
    "aifinops_model_cost_per_million_tokens_usd",
    "gauge",
    "USD per 1M tokens per model and token type; source=price_list (price file or override) "
    "or measured (self-hosted: serving pods' cost / tokens over the rate window, split between "
    "token types by the configured cost weights).",
    ("model", "provider", "token_type", "source"),
    "experimental",
)
MODEL_API_EQUIVALENT_PRICE = _spec(
    "aifinops_model_api_equivalent_cost_per_million_tokens_usd",
    "gauge",
    "Price-list USD per 1M tokens of the API model configured as a self-hosted model's "
    "equivalent, labelled with the self-hosted model (compare with source=measured).",
    ("model", "provider", "token_type"),
    "experimental",
)
UNPRICED_TOKENS = _spec(
    "aifinops_unpriced_tokens_total",
    "counter",
    "Tokens (all types) that got no price: a model missing from the price list, or a "
    "self-hosted model with no measured cost yet. Their cost is missing, not zero.",
    ("model", "provider"),
    "experimental",
)
LLM_PRICE_CATALOG_INFO = _spec(
    "aifinops_llm_price_catalog_info",
    "gauge",
    "Always 1; version names the LLM price list in use (declared, or sha256 of the file, "
    "with +overrides:<digest> when configuration overrides prices).",
    ("version",),
    "experimental",
)

# --- self-metrics --------------------------------------------------------------------------
SOURCE_UP = _spec(
    "aifinops_source_up",
    "gauge",
    "1 if the source's last fetch succeeded, else 0.",
    ("source",),
)
SOURCE_AGE = _spec(
    "aifinops_source_age_seconds",
    "gauge",
    "Age of the data in use from this source (seconds since its last successful fetch); "
    "absent when no good data is in use.",
    ("source",),
)
SOURCE_STALE = _spec(
    "aifinops_source_stale",
    "gauge",
    "1 when the source's last good data passed stale_after_seconds and was dropped.",
    ("source",),
)
SOURCE_ERRORS = _spec(
    "aifinops_source_errors_total",
    "counter",
    "Failed fetches per source and reason (connect, timeout, http_status, too_large, "
    "parse, invalid).",
    ("source", "reason"),
)
SOURCE_DURATION = _spec(
    "aifinops_source_duration_seconds",
    "gauge",
    "Duration of the source's last fetch and parse, in seconds.",
    ("source",),
)
REFRESH_DURATION = _spec(
    "aifinops_refresh_duration_seconds",
    "gauge",
    "Duration of the last refresh cycle (fetch, model, render), in seconds.",
)
REFRESH_TIMESTAMP = _spec(
    "aifinops_last_refresh_timestamp_seconds",
    "gauge",
    "Unix time of the last completed refresh cycle.",
)
REFRESHES = _spec(
    "aifinops_refreshes_total",
    "counter",
    "Refresh cycles completed.",
)
BUILD_INFO = _spec(
    "aifinops_build_info",
    "gauge",
    "Always 1; labels carry the exporter version, the rule bundle version and the GPU price "
    "catalog version.",
    ("version", "rules_version", "gpu_price_catalog_version"),
)
FOLDED_TENANTS = _spec(
    "aifinops_folded_tenants",
    "gauge",
    "Tenants folded into __other__ because limits.max_tenants was reached (money is kept).",
)

CATALOG: tuple[MetricSpec, ...] = (
    TENANT_COST_RATE,
    TENANT_COST_TOTAL,
    CLUSTER_COST_RATE,
    TENANT_GPUS,
    TENANT_GPUS_USED,
    TENANT_GPU_EFFICIENCY,
    TENANT_GPU_UNUSED_COST,
    IDLE_GPUS,
    IDLE_GPU_COST,
    GPU_PRICE,
    TOKENS,
    TOKEN_COST,
    MODEL_TOKEN_PRICE,
    MODEL_API_EQUIVALENT_PRICE,
    UNPRICED_TOKENS,
    LLM_PRICE_CATALOG_INFO,
    SOURCE_UP,
    SOURCE_AGE,
    SOURCE_STALE,
    SOURCE_ERRORS,
    SOURCE_DURATION,
    REFRESH_DURATION,
    REFRESH_TIMESTAMP,
    REFRESHES,
    BUILD_INFO,
    FOLDED_TENANTS,
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in CATALOG}

# Sentinel tenants: ordinary rows, as in OpenCost.
IDLE_TENANT = "__idle__"
UNALLOCATED_TENANT = "__unallocated__"
OTHER_TENANT = "__other__"
RESOURCES = ("gpu", "cpu", "ram", "storage", "network", "shared")
BASES = ("allocation", "usage")
# API token dollars in the per-tenant cost series (not in RESOURCES: the core never has it).
TOKENS_RESOURCE = "tokens"
TOKEN_TYPES = ("input", "output", "cached_input")
