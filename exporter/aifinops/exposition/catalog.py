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

# The label vocabulary has its home in the model; re-exported for the series' readers.
from aifinops.model.vocabulary import BASES as BASES
from aifinops.model.vocabulary import IDLE_TENANT as IDLE_TENANT
from aifinops.model.vocabulary import OTHER_TENANT as OTHER_TENANT
from aifinops.model.vocabulary import RESOURCES as RESOURCES
from aifinops.model.vocabulary import SPLIT_METHODS as SPLIT_METHODS
from aifinops.model.vocabulary import TOKEN_TYPES as TOKEN_TYPES
from aifinops.model.vocabulary import TOKENS_RESOURCE as TOKENS_RESOURCE
from aifinops.model.vocabulary import UNALLOCATED_TENANT as UNALLOCATED_TENANT

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
# Sum-safe: sum() over any money family equals the total its HELP names. Each basis has a
# family of its own (a `basis` label would make sum() count every dollar twice).
TENANT_COST_RATE = _spec(
    "aifinops_tenant_cost_usd_per_hour",
    "gauge",
    "Cost rate per tenant and resource in USD per hour, basis allocation (as billed), averaged "
    "over the OpenCost window. Tenants include the sentinels __idle__ and __unallocated__: "
    "sum() equals sum(aifinops_cluster_cost_usd_per_hour), by resource too.",
    ("tenant", "resource"),
)
TENANT_COST_TOTAL = _spec(
    "aifinops_tenant_cost_usd_total",
    "counter",
    "Dollars accrued per tenant and resource since the exporter started, basis allocation "
    "(rate integrated between refreshes): sum() is the cluster's dollars over that time.",
    ("tenant", "resource"),
)
TENANT_USAGE_COST_RATE = _spec(
    "aifinops_tenant_usage_basis_cost_usd_per_hour",
    "gauge",
    "Cost rate per tenant and resource in USD per hour, basis usage: GPU dollars follow "
    "measured use and the unused rest goes to __idle__; other resources as billed. sum() "
    "equals sum(aifinops_cluster_cost_usd_per_hour), by resource too. Published only while "
    "DCGM data is available.",
    ("tenant", "resource"),
)
TENANT_USAGE_COST_TOTAL = _spec(
    "aifinops_tenant_usage_basis_cost_usd_total",
    "counter",
    "Dollars accrued per tenant and resource since the exporter started, basis usage: sum() "
    "is the cluster's dollars over the time DCGM data was available.",
    ("tenant", "resource"),
)
CLUSTER_COST_RATE = _spec(
    "aifinops_cluster_cost_usd_per_hour",
    "gauge",
    "Whole-cluster cost rate per resource in USD per hour: sum() is the cluster's cost rate, "
    "which each basis' tenants sum to.",
    ("resource",),
)

# --- GPUs ----------------------------------------------------------------------------------
TENANT_GPUS = _spec(
    "aifinops_tenant_gpus",
    "gauge",
    "GPUs a tenant's pods requested, in whole-GPU equivalents: OpenCost's request (a 1g MIG "
    "slice of a 7-slice GPU counts 1/7, one of 4 time-slice replicas 0.25).",
    ("tenant", "gpu_model"),
)
TENANT_GPUS_USED = _spec(
    "aifinops_tenant_gpus_used",
    "gauge",
    "GPU-equivalents of physical device time a tenant used: utilization on a whole GPU, MIG "
    "fraction x utilization on a slice, its share of the device on a time-sliced GPU.",
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
    "What a tenant's GPU holds left unused of their request, in USD per hour: device price x "
    "(requested - used GPU-equivalents), bounded by the device's unused time. The usage basis "
    "(each hold costs device price x its share of the device's time) books this money to "
    "__idle__; this series says whose GPUs it came from. sum() is the unused cost of every "
    "held GPU.",
    ("tenant", "gpu_model"),
)
# How each GPU dollar was split among a device's holds (vocabulary.SPLIT_METHODS; see
# docs/shared-gpus.md). Families of their own, so the tenant cost families keep their labels.
TENANT_GPU_COST_BY_METHOD = _spec(
    "aifinops_tenant_gpu_cost_by_method_usd_per_hour",
    "gauge",
    "GPU cost rate per tenant in USD per hour, basis allocation, by how its devices were split "
    "(method: exclusive, mig, per_process, hami, even_split, request_share). sum() equals "
    'sum(aifinops_cluster_cost_usd_per_hour{resource="gpu"}), and per tenant its '
    'aifinops_tenant_cost_usd_per_hour{resource="gpu"} (the self-hosted token charge-back '
    "moves GPU dollars with their methods).",
    ("tenant", "method"),
    "experimental",
)
TENANT_USAGE_GPU_COST_BY_METHOD = _spec(
    "aifinops_tenant_usage_basis_gpu_cost_by_method_usd_per_hour",
    "gauge",
    "GPU cost rate per tenant in USD per hour, basis usage, by how its devices were split "
    "(method as in aifinops_tenant_gpu_cost_by_method_usd_per_hour; even_split: DCGM repeated "
    "the device figure on every pod, a guess). sum() equals "
    'sum(aifinops_cluster_cost_usd_per_hour{resource="gpu"}), and per tenant its usage-basis '
    "GPU rate. Published only while DCGM or HAMi data is available.",
    ("tenant", "method"),
    "experimental",
)
GPU_SPLIT_COST = _spec(
    "aifinops_gpu_split_cost_usd_per_hour",
    "gauge",
    "Self-metric: the cluster's GPU dollars per hour on the usage basis (the allocation basis "
    "while no GPU data is available) by split method. sum() equals "
    'sum(aifinops_cluster_cost_usd_per_hour{resource="gpu"}); the share with method="even_split" '
    "is the part split by a guess (alert AIFinOpsGPUSpendEvenSplit).",
    ("method",),
    "experimental",
)
HAMI_HELD_PODS = _spec(
    "aifinops_hami_held_pods",
    "gauge",
    "HAMi pods on a device with no usage series yet (no CUDA call so far: HAMi #281): held at "
    "their billing share on the usage basis, never counted idle.",
    (),
    "experimental",
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
    "Cost rate of the idle GPUs in aifinops_idle_gpus, in USD per hour (basis allocation): "
    "sum() is the cost rate of every idle GPU.",
    ("tenant", "gpu_model"),
)
GPU_PRICE = _spec(
    "aifinops_gpu_price_usd_per_hour",
    "gauge",
    "Price per whole GPU-hour in use for a GPU model, one series per model: source is "
    "opencost (derived from its gpuCost/gpuHours) where OpenCost prices GPUs, else owned "
    "(gpu_pricing.owned: depreciation, support, hosting; also where it takes precedence over "
    "OpenCost), catalog (bundled price list) or override (configuration). A price, not an "
    "amount: its sum() means nothing.",
    ("gpu_model", "source"),
)
OWNED_GPU_PRICE = _spec(
    "aifinops_owned_gpu_price_usd_per_hour",
    "gauge",
    "Hourly cost of one owned GPU (gpu_pricing.owned) by pool, GPU model and component: "
    "capital (depreciation; 0 after the depreciation life), support, hosting; their sum is the "
    "owned price. Published wherever configured, billed or not (the price in use is "
    "aifinops_gpu_price_usd_per_hour). A price, not an amount: its sum() means nothing.",
    ("pool", "gpu_model", "component"),
    "experimental",
)
OWNED_GPU_PRICE_INFO = _spec(
    "aifinops_owned_gpu_price_info",
    "gauge",
    "Always 1 per owned GPU pool; labels carry the configured inputs of its price (USD per "
    "GPU; purchase_date in UTC) and the precedence against OpenCost's GPU price.",
    (
        "pool",
        "gpu_model",
        "node_pattern",
        "purchase_date",
        "purchase_price_usd",
        "depreciation_method",
        "depreciation_life_years",
        "residual_value_usd",
        "support_usd_per_year",
        "hosting_usd_per_gpu_month",
        "precedence",
    ),
    "experimental",
)

# --- energy and carbon (owned GPUs, issue 17) ------------------------------------------------
# Not dollars except the energy cost: joules, watts and grams are families of their own, each
# conserved like money (tenants + __idle__ + __unallocated__ = the fleet's measured total).
# Prometheus base units: joules, watts, grams (carbon as grams of CO2-equivalent).
TENANT_GPU_ENERGY = _spec(
    "aifinops_tenant_gpu_energy_joules_total",
    "counter",
    "GPU energy measured by DCGM (its total-energy counter, else power x time) since the "
    "exporter started, per tenant, in joules, before PUE: each GPU's energy split by its "
    "holds' measured share of the device (as the usage basis), the unused rest of a held GPU "
    "to its holders by their unused share, unrequested capacity and unheld GPUs to __idle__. "
    "sum() equals aifinops_cluster_gpu_energy_joules_total.",
    ("tenant",),
    "experimental",
)
CLUSTER_GPU_ENERGY = _spec(
    "aifinops_cluster_gpu_energy_joules_total",
    "counter",
    "GPU energy of every GPU DCGM measured since the exporter started, in joules, before PUE.",
    (),
    "experimental",
)
TENANT_GPU_POWER = _spec(
    "aifinops_tenant_gpu_power_watts",
    "gauge",
    "Average GPU power per tenant over the last measured interval, in watts, before PUE (the "
    "energy split of aifinops_tenant_gpu_energy_joules_total over that interval): sum() "
    "equals aifinops_cluster_gpu_power_watts.",
    ("tenant",),
    "experimental",
)
CLUSTER_GPU_POWER = _spec(
    "aifinops_cluster_gpu_power_watts",
    "gauge",
    "Average power of every measured GPU over the last measured interval, in watts, before PUE.",
    (),
    "experimental",
)
TENANT_ENERGY_COST_TOTAL = _spec(
    "aifinops_tenant_energy_cost_usd_total",
    "counter",
    "Dollars of GPU electricity per tenant since the exporter started: energy x energy.pue x "
    "the price per kWh in force (flat or time of use in budgets.time_zone). Not part of "
    "aifinops_tenant_cost_usd_* (OpenCost's and owned GPU prices exclude power): add it for a "
    "bill. sum() equals aifinops_cluster_energy_cost_usd_total.",
    ("tenant",),
    "experimental",
)
CLUSTER_ENERGY_COST_TOTAL = _spec(
    "aifinops_cluster_energy_cost_usd_total",
    "counter",
    "Dollars of the electricity of every measured GPU since the exporter started (x PUE).",
    (),
    "experimental",
)
TENANT_ENERGY_COST_RATE = _spec(
    "aifinops_tenant_energy_cost_usd_per_hour",
    "gauge",
    "GPU electricity cost rate per tenant over the last measured interval, in USD per hour "
    "(x PUE): sum() equals aifinops_cluster_energy_cost_usd_per_hour.",
    ("tenant",),
    "experimental",
)
CLUSTER_ENERGY_COST_RATE = _spec(
    "aifinops_cluster_energy_cost_usd_per_hour",
    "gauge",
    "Electricity cost rate of every measured GPU over the last measured interval, USD per hour.",
    (),
    "experimental",
)
TENANT_CARBON_TOTAL = _spec(
    "aifinops_tenant_carbon_grams_total",
    "counter",
    "Grams of CO2-equivalent of the GPU electricity per tenant since the exporter started: "
    "energy x energy.pue x the grid intensity in force (gCO2e/kWh, flat or a schedule). "
    "sum() equals aifinops_cluster_carbon_grams_total.",
    ("tenant",),
    "experimental",
)
CLUSTER_CARBON_TOTAL = _spec(
    "aifinops_cluster_carbon_grams_total",
    "counter",
    "Grams of CO2-equivalent of the electricity of every measured GPU since the exporter "
    "started (x PUE).",
    (),
    "experimental",
)
TENANT_CARBON_RATE = _spec(
    "aifinops_tenant_carbon_grams_per_hour",
    "gauge",
    "Grams of CO2-equivalent per hour per tenant over the last measured interval (x PUE): "
    "sum() equals aifinops_cluster_carbon_grams_per_hour.",
    ("tenant",),
    "experimental",
)
CLUSTER_CARBON_RATE = _spec(
    "aifinops_cluster_carbon_grams_per_hour",
    "gauge",
    "Grams of CO2-equivalent per hour of every measured GPU over the last measured interval.",
    (),
    "experimental",
)
TENANT_ENERGY_MONTH_TO_DATE = _spec(
    "aifinops_tenant_energy_month_to_date_cost_usd",
    "gauge",
    "GPU electricity dollars per tenant since the calendar month started in budgets.time_zone, "
    "as this exporter measured them (kept across restarts with state.path set; the restart's "
    "own gap is not measured): sum() equals "
    "aifinops_cluster_energy_month_to_date_cost_usd.",
    ("tenant",),
    "experimental",
)
CLUSTER_ENERGY_MONTH_TO_DATE = _spec(
    "aifinops_cluster_energy_month_to_date_cost_usd",
    "gauge",
    "GPU electricity dollars of the whole fleet since the calendar month started.",
    (),
    "experimental",
)
TENANT_CARBON_MONTH_TO_DATE = _spec(
    "aifinops_tenant_carbon_month_to_date_grams",
    "gauge",
    "Grams of CO2-equivalent per tenant since the calendar month started in "
    "budgets.time_zone: sum() equals aifinops_cluster_carbon_month_to_date_grams.",
    ("tenant",),
    "experimental",
)
CLUSTER_CARBON_MONTH_TO_DATE = _spec(
    "aifinops_cluster_carbon_month_to_date_grams",
    "gauge",
    "Grams of CO2-equivalent of the whole fleet since the calendar month started.",
    (),
    "experimental",
)
TENANT_ENERGY_BUDGET = _spec(
    "aifinops_tenant_energy_budget_usd",
    "gauge",
    "Monthly budget for a tenant's GPU electricity, in USD (energy.budgets): sum() is the "
    "budgeted tenants' total.",
    ("tenant",),
    "experimental",
)
TENANT_CARBON_BUDGET = _spec(
    "aifinops_tenant_carbon_budget_grams",
    "gauge",
    "Monthly carbon budget for a tenant, in grams of CO2-equivalent (energy.budgets carbon_kg "
    "x 1000): sum() is the budgeted tenants' total.",
    ("tenant",),
    "experimental",
)
ENERGY_PRICE = _spec(
    "aifinops_energy_price_usd_per_kwh",
    "gauge",
    "Electricity price in force now, USD per kWh (energy.price: flat, or the time-of-use "
    "window that covers now in budgets.time_zone). A price: its sum() means nothing.",
    (),
    "experimental",
)
GRID_CARBON_INTENSITY = _spec(
    "aifinops_grid_carbon_intensity_grams_per_kwh",
    "gauge",
    "Grid carbon intensity in force now, grams of CO2-equivalent per kWh (energy.carbon).",
    (),
    "experimental",
)
ENERGY_PUE = _spec(
    "aifinops_energy_pue",
    "gauge",
    "Power usage effectiveness applied to measured GPU energy (energy.pue, >= 1): facility "
    "energy = GPU energy x PUE.",
    (),
    "experimental",
)
ENERGY_GPUS = _spec(
    "aifinops_energy_gpus",
    "gauge",
    "GPUs whose energy over the last interval came from each method: counter (DCGM's total "
    "energy counter, resets handled like increase()) or power (power draw x time, where the "
    "counter is absent).",
    ("method",),
    "experimental",
)
ENERGY_COUNTER_RESETS = _spec(
    "aifinops_energy_dcgm_resets_total",
    "counter",
    "DCGM energy counters seen going down (a driver reload or GPU reset): the interval is "
    "counted from zero, as Prometheus' increase() does.",
    (),
    "experimental",
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
    "charge-back; API token money is resource=tokens). sum() is the dollars of every token "
    "counted, both kinds.",
    ("tenant", "model", "provider", "token_type"),
    "experimental",
)
MODEL_TOKEN_PRICE = _spec(
    "aifinops_model_cost_per_million_tokens_usd",
    "gauge",
    "USD per 1M tokens per model and token type; source=price_list (price file or override) "
    "or measured (self-hosted: serving pods' cost / tokens over the rate window, split between "
    "token types by the configured cost weights). A price, not an amount: its sum() means "
    "nothing.",
    ("model", "provider", "token_type", "source"),
    "experimental",
)
MODEL_API_EQUIVALENT_PRICE = _spec(
    "aifinops_model_api_equivalent_cost_per_million_tokens_usd",
    "gauge",
    "Price-list USD per 1M tokens of the API model configured as a self-hosted model's "
    "equivalent, labelled with the self-hosted model (compare with source=measured). A "
    "price: its sum() means nothing.",
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

# --- month to date, budgets ----------------------------------------------------------------
TENANT_MONTH_TO_DATE = _spec(
    "aifinops_tenant_month_to_date_cost_usd",
    "gauge",
    "Spend per tenant since the calendar month started in budgets.time_zone, in USD, basis "
    "allocation: OpenCost's daily sets (infrastructure, sentinels included) plus the token "
    "dollars and self-hosted charge-back this exporter counted since the month start (kept "
    "across restarts with state.path set, else a restart loses them): sum() is the cluster's "
    "month to date. Absent without OpenCost month-to-date data.",
    ("tenant",),
    "experimental",
)
# Budget families are sum-safe: one family per scope for the money (scopes overlap: all
# includes gpu and tokens) and the global budget in families of its own (no tenant="__all__"
# row beside the tenants). The ratio and state families keep a scope label: their sum() is
# meaningless anyway, and the alerts join on it.
_SCOPE_WORD = {"all": "", "gpu": "gpu_", "tokens": "token_"}
_SCOPE_TEXT = {
    "all": "scope all (every resource)",
    "gpu": "scope gpu (resource gpu)",
    "tokens": "scope tokens (resource tokens)",
}


def _budget_money(owner: str, scope: str, what: str) -> MetricSpec:
    """One budget money family: ``owner`` tenant (per tenant) or cluster (the global budget),
    ``what`` budget, spend or forecast."""
    part = "" if what == "budget" else f"_{what}"
    name = f"aifinops_{owner}_{_SCOPE_WORD[scope]}budget{part}_usd"
    whose = "per tenant" if owner == "tenant" else "of the global budget (the whole cluster)"
    text = {
        "budget": "Monthly budget in USD",
        "spend": "Month-to-date spend in USD counted against the budget",
        "forecast": "Projected month-end spend in USD against the budget (Theil-Sen trend over "
        "the daily spend; a run rate with under 3 days of history), never below the spend so "
        "far,",
    }[what]
    total = (
        "sum() is the budgeted tenants' total"
        if owner == "tenant"
        else "one series; nothing to sum"
    )
    return _spec(
        name,
        "gauge",
        f"{text} {whose}, {_SCOPE_TEXT[scope]}: {total}.",
        ("tenant",) if owner == "tenant" else (),
        "experimental",
    )


BUDGET_OWNERS = ("tenant", "cluster")
BUDGET_SCOPE_NAMES = ("all", "gpu", "tokens")
# BUDGET_MONEY[(owner, scope, what)] with what in budget, spend, forecast.
BUDGET_MONEY: dict[tuple[str, str, str], MetricSpec] = {
    (o, sc, w): _budget_money(o, sc, w)
    for o in BUDGET_OWNERS
    for w in ("budget", "spend", "forecast")
    for sc in BUDGET_SCOPE_NAMES
}


def _budget_other(owner: str, suffix: str, help_: str, extra: tuple[str, ...] = ()) -> MetricSpec:
    prefix = "aifinops_budget" if owner == "tenant" else "aifinops_cluster_budget"
    whose = "per tenant and scope" if owner == "tenant" else "of the global budget, per scope"
    labels = ("tenant", "scope") if owner == "tenant" else ("scope",)
    help_text = f"{help_} ({whose})."
    return _spec(f"{prefix}_{suffix}", "gauge", help_text, labels + extra, "experimental")


BUDGET_RATIOS: dict[tuple[str, str], MetricSpec] = {}
for _o in BUDGET_OWNERS:
    BUDGET_RATIOS[(_o, "used")] = _budget_other(
        _o, "used_ratio", "Month-to-date spend / budget (may exceed 1); absent for a zero budget"
    )
    BUDGET_RATIOS[(_o, "exhaustion")] = _budget_other(
        _o,
        "exhaustion_seconds",
        "Seconds from now until the projected spend reaches the budget; 0 once it has; absent "
        "when the projection does not reach it this month",
    )
    BUDGET_RATIOS[(_o, "warning")] = _budget_other(
        _o,
        "warning_ratio",
        "Configured warning threshold as a fraction of the budget (the alerts join on it)",
    )
    BUDGET_RATIOS[(_o, "critical")] = _budget_other(
        _o,
        "critical_ratio",
        "Configured critical threshold as a fraction of the budget (the alerts join on it)",
    )
    BUDGET_RATIOS[(_o, "state")] = _budget_other(
        _o,
        "state",
        "Budget state as a state set: one sample per state (ok, warning, critical, exceeded), 1 "
        "for the current one. exceeded: spend > budget; critical: used ratio >= critical; "
        "warning: used ratio >= warning",
        ("state",),
    )

# --- ROI -----------------------------------------------------------------------------------
ROI_RATIO = _spec(
    "aifinops_roi_ratio",
    "gauge",
    "(benefits - ai_cost) / ai_cost per initiative over its period so far (1.5 = +150 %). "
    "Absent when ai_cost is 0 (undefined; the API says why).",
    ("initiative",),
    "experimental",
)
ROI_BENEFIT = _spec(
    "aifinops_roi_benefit_usd",
    "gauge",
    "Gross benefit in USD per initiative and kind (productivity, quality, risk), pro-rated "
    "to the elapsed part of the initiative's period: sum() is every initiative's benefit "
    "(initiatives sharing a tenant each count it).",
    ("initiative", "kind"),
    "experimental",
)
ROI_COST = _spec(
    "aifinops_roi_cost_usd",
    "gauge",
    "ai_cost in USD per initiative over its period so far: its tenants' measured GPU, token "
    "and other infrastructure cost plus configured other cost (pro-rated): sum() is every "
    "initiative's ai_cost (initiatives sharing a tenant each count its cost).",
    ("initiative",),
    "experimental",
)
ROI_PAYBACK = _spec(
    "aifinops_roi_payback_seconds",
    "gauge",
    "ai_cost / gross benefit per second: the time of benefit that pays the cost so far, in "
    "seconds. Absent without benefit.",
    ("initiative",),
    "experimental",
)

# --- routing -------------------------------------------------------------------------------
ROUTING_SCORE = _spec(
    "aifinops_routing_score",
    "gauge",
    "Routing score in [0, 1] per workload class and eligible candidate model: weighted sum "
    "of normalized cost, quality and latency. Excluded candidates are absent.",
    ("workload", "model"),
    "experimental",
)
ROUTING_RECOMMENDED = _spec(
    "aifinops_routing_recommended",
    "gauge",
    "1 for the recommended (best-scoring) model of a workload class, 0 for the other "
    "eligible candidates.",
    ("workload", "model"),
    "experimental",
)
ROUTING_SAVINGS = _spec(
    "aifinops_routing_savings_usd_per_month",
    "gauge",
    "USD per month saved by moving the workload's observed token volume from its current "
    "model to the recommended one (0 when the current model is the best or cheaper). Absent "
    "without a priced current model. sum() is the saving of following every recommendation.",
    ("workload",),
    "experimental",
)

# --- recommendations -----------------------------------------------------------------------
RECOMMENDATION_SAVINGS = _spec(
    "aifinops_recommendation_savings_usd_per_month",
    "gauge",
    "Estimated USD per month saved per recommendation kind (idle_gpu, rightsize, spot, "
    "model_switch; budget_at_risk is a warning worth 0) and tenant. Kinds can overlap (an "
    "idle GPU's workload may also be a spot candidate), so sum() is an upper bound of what "
    "following every recommendation saves; a tenant's savings are scaled to at most its "
    "monthly spend.",
    ("kind", "tenant"),
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
    "Always 1; labels carry the exporter version, the rule bundle version, the GPU price "
    "catalog version and the source revision (git commit, or unknown: aifinops/version.py).",
    ("version", "rules_version", "gpu_price_catalog_version", "revision"),
)
FOLDED_TENANTS = _spec(
    "aifinops_folded_tenants",
    "gauge",
    "Tenants folded into __other__ because limits.max_tenants was reached (money is kept).",
)
DCGM_UTILIZATION_GPUS = _spec(
    "aifinops_dcgm_utilization_gpus",
    "gauge",
    "GPU units (whole GPUs and MIG instances) whose utilization was read from each DCGM metric "
    "in the DCGM data in use: with sources.dcgm.utilization_metric=auto the profiling metric "
    "where a unit has it, the device metric elsewhere (either dcgm-exporter generation's name).",
    ("metric",),
)
SERIES_DROPPED = _spec(
    "aifinops_series_dropped_total",
    "counter",
    "Series over limits.max_series_per_family, per family and refresh: summed into __other__ "
    "series where the family holds dollars, tokens or GPUs (totals are kept), dropped "
    "otherwise. Absent until it happens.",
    ("family",),
)
TOKEN_TARGET_UP = _spec(
    "aifinops_token_target_up",
    "gauge",
    "1 if the last read of a token source's scrape target worked, 0 if it failed (that target "
    "keeps its last good read until the source's stale_after_seconds; the source is down only "
    "when every target is). target is host, port and path of the URL.",
    ("source", "target"),
    "experimental",
)
TOKEN_SERIES_SKIPPED = _spec(
    "aifinops_token_series_skipped_total",
    "counter",
    "Token series skipped as unreadable (a label value that is not text or cannot be "
    "encoded), counted once per read; the rest of the source is read as usual.",
    ("source",),
    "experimental",
)
CONFIG_RELOAD_SUCCESS = _spec(
    "aifinops_config_last_reload_successful",
    "gauge",
    "1 if the last configuration reload (SIGHUP or POST /-/reload) succeeded, 0 if it failed "
    "and the previous configuration is still in force.",
)
CONFIG_RELOAD_TIMESTAMP = _spec(
    "aifinops_config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful configuration load (start-up counts as one).",
)
STATE_SAVE_ERRORS = _spec(
    "aifinops_state_save_errors_total",
    "counter",
    "Failed writes of the state file (state.path). The figures stay in memory; the next write "
    "is tried after state.save_interval_seconds. Present only with a state file configured.",
    (),
    "experimental",
)
STATE_LAST_SAVE = _spec(
    "aifinops_state_last_save_timestamp_seconds",
    "gauge",
    "Unix time of the last successful write of the state file (state.path); absent until the "
    "first one. What a restart loses grows with the time since.",
    (),
    "experimental",
)
REFRESH_FAILURES = _spec(
    "aifinops_refresh_failures_total",
    "counter",
    "Unexpected failures of a refresh stage (fetch, release, inputs, model, finance, report, "
    "render, prepare, state, loop); the cycle goes on with the previous report (prepare: "
    "the API builds its answers on request). Every stage is present from the start (0).",
    ("stage",),
    "experimental",
)
REFRESH_STALLED = _spec(
    "aifinops_refresh_stalled",
    "gauge",
    "1 when no refresh has published a new report for 3 refresh intervals (or 3 times the "
    "longest source fetch bound, 1.5 x its timeout, when longer); the page then shows older "
    "figures and /readyz answers 503. Else 0.",
    (),
    "experimental",
)
MONTH_TO_DATE_READY = _spec(
    "aifinops_month_to_date_ready",
    "gauge",
    "1 when the page's month-to-date figures (budgets, month to date, chargeback books) come "
    "from OpenCost's month (the opencost_month query); 0 while that query has not landed (the "
    "first seconds after start-up at fleet scale: cost series are published before it) or "
    "its data went stale. Present when the month query is configured.",
    (),
    "experimental",
)
REFRESH_ENGINE_UP = _spec(
    "aifinops_refresh_engine_up",
    "gauge",
    "1 while the refresh engine process runs (server.refresh_process: separate; the process "
    "serving the page restarts it when it exits, and serves its last page meanwhile). Absent "
    "with refresh_process: inline.",
    (),
    "experimental",
)
REFRESH_ENGINE_RESTARTS = _spec(
    "aifinops_refresh_engine_restarts_total",
    "counter",
    "Times the refresh engine process exited and was started again (server.refresh_process: "
    "separate).",
    (),
    "experimental",
)
REFRESH_ENGINE_RESIDENT_MEMORY = _spec(
    "aifinops_refresh_engine_resident_memory_bytes",
    "gauge",
    "Resident memory of the refresh engine process in bytes (server.refresh_process: "
    "separate; process_resident_memory_bytes is the serving process's own). Absent while the "
    "engine is down.",
    (),
    "experimental",
)

# The process collector's series (prometheus_client's ProcessCollector, the names and meanings
# every Prometheus client library uses), read when /metrics is scraped
# (aifinops/exposition/process.py). Not aifinops_-prefixed, so listed apart from CATALOG.
PROCESS: tuple[MetricSpec, ...] = (
    _spec("process_cpu_seconds_total", "counter", "Total user and system CPU time, in seconds."),
    _spec("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    _spec("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    _spec("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch."),
    _spec("process_open_fds", "gauge", "Number of open file descriptors."),
    _spec("process_max_fds", "gauge", "Maximum number of open file descriptors."),
)

CATALOG: tuple[MetricSpec, ...] = (
    TENANT_COST_RATE,
    TENANT_COST_TOTAL,
    TENANT_USAGE_COST_RATE,
    TENANT_USAGE_COST_TOTAL,
    CLUSTER_COST_RATE,
    TENANT_GPUS,
    TENANT_GPUS_USED,
    TENANT_GPU_EFFICIENCY,
    TENANT_GPU_UNUSED_COST,
    TENANT_GPU_COST_BY_METHOD,
    TENANT_USAGE_GPU_COST_BY_METHOD,
    IDLE_GPUS,
    IDLE_GPU_COST,
    GPU_PRICE,
    OWNED_GPU_PRICE,
    OWNED_GPU_PRICE_INFO,
    TENANT_GPU_ENERGY,
    CLUSTER_GPU_ENERGY,
    TENANT_GPU_POWER,
    CLUSTER_GPU_POWER,
    TENANT_ENERGY_COST_TOTAL,
    CLUSTER_ENERGY_COST_TOTAL,
    TENANT_ENERGY_COST_RATE,
    CLUSTER_ENERGY_COST_RATE,
    TENANT_CARBON_TOTAL,
    CLUSTER_CARBON_TOTAL,
    TENANT_CARBON_RATE,
    CLUSTER_CARBON_RATE,
    TENANT_ENERGY_MONTH_TO_DATE,
    CLUSTER_ENERGY_MONTH_TO_DATE,
    TENANT_CARBON_MONTH_TO_DATE,
    CLUSTER_CARBON_MONTH_TO_DATE,
    TENANT_ENERGY_BUDGET,
    TENANT_CARBON_BUDGET,
    ENERGY_PRICE,
    GRID_CARBON_INTENSITY,
    ENERGY_PUE,
    ENERGY_GPUS,
    ENERGY_COUNTER_RESETS,
    TOKENS,
    TOKEN_COST,
    MODEL_TOKEN_PRICE,
    MODEL_API_EQUIVALENT_PRICE,
    UNPRICED_TOKENS,
    LLM_PRICE_CATALOG_INFO,
    TENANT_MONTH_TO_DATE,
    *BUDGET_MONEY.values(),
    *BUDGET_RATIOS.values(),
    ROI_RATIO,
    ROI_BENEFIT,
    ROI_COST,
    ROI_PAYBACK,
    ROUTING_SCORE,
    ROUTING_RECOMMENDED,
    ROUTING_SAVINGS,
    RECOMMENDATION_SAVINGS,
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
    DCGM_UTILIZATION_GPUS,
    GPU_SPLIT_COST,
    HAMI_HELD_PODS,
    SERIES_DROPPED,
    TOKEN_TARGET_UP,
    TOKEN_SERIES_SKIPPED,
    CONFIG_RELOAD_SUCCESS,
    CONFIG_RELOAD_TIMESTAMP,
    STATE_SAVE_ERRORS,
    STATE_LAST_SAVE,
    REFRESH_FAILURES,
    REFRESH_STALLED,
    MONTH_TO_DATE_READY,
    REFRESH_ENGINE_UP,
    REFRESH_ENGINE_RESTARTS,
    REFRESH_ENGINE_RESIDENT_MEMORY,
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in CATALOG}
