"""Savings recommendations per tenant. Pure; every figure comes in as an argument.

Kinds and how each saving is estimated (USD per month = USD per hour × :data:`HOURS_PER_MONTH`):

* ``idle_gpu`` — reclaim GPUs idle for the idle window: the idle cost rate. Comes from the
  tenant's GPU cost on that GPU model.
* ``rightsize`` — a workload whose peak use fits a cheaper GPU model or MIG slice: peak used
  compute ``peak_utilization × gpus × compute(current)`` must be ≤ ``headroom × compute(option)``
  and its peak memory (when known) ≤ the option's memory; the cheapest fitting option wins.
  Saving = ``cost × (1 − price(option) / (gpus × price(current)))``, from the workload's cost.
* ``spot`` — a fault-tolerant workload (configured label) on on-demand GPUs:
  ``cost × (1 − spot / on_demand)`` from the given price pair, from the workload's cost.
* ``model_switch`` — a routed workload whose recommended model is cheaper than its current
  one: the routing savings, from the current model's monthly cost.
* ``budget_at_risk`` — a budget whose month-end forecast exceeds it: saving 0 (a warning).

Confidence, by the observation window: ``high`` ≥ 7 days, ``medium`` ≥ 1 day, else ``low``;
one level lower for a rightsize without memory evidence and for a model switch to a
lower-quality model; ``spot`` is at most ``medium`` (interruption cost is not measured);
``budget_at_risk`` is ``high`` for a Theil–Sen forecast on ≥ 7 days, ``medium`` for any
Theil–Sen forecast, ``low`` for a run rate.

Invariants (property-tested): ``0 ≤ saving ≤ source_cost_usd_per_month`` for every
recommendation, and the savings of one tenant sum to at most its monthly spend. Kinds can
overlap (an idle GPU's workload may also be a spot candidate), so when a tenant's savings
``S`` exceed its monthly spend ``M`` every one of its savings is multiplied by ``M / S``
(proportional, so the order is kept; the factor is recorded as ``evidence["scaled_by"]``).
Money is float USD per month (gauges).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from aifinops.model.budgets import BudgetStatus
from aifinops.model.gpu_prices import mig_fraction, normalize_gpu_model
from aifinops.model.routing import RoutingResult

RecommendationKind = Literal["idle_gpu", "rightsize", "spot", "model_switch", "budget_at_risk"]
RECOMMENDATION_KINDS: tuple[RecommendationKind, ...] = (
    "idle_gpu",
    "rightsize",
    "spot",
    "model_switch",
    "budget_at_risk",
)
Confidence = Literal["low", "medium", "high"]
CONFIDENCE_LEVELS: tuple[Confidence, ...] = ("low", "medium", "high")

HOURS_PER_MONTH = 730.0  # 365 × 24 / 12
DAY_SECONDS = 86400.0
WEEK_SECONDS = 7 * DAY_SECONDS

Evidence = Mapping[str, float | str]


@dataclass(frozen=True, slots=True)
class Recommendation:
    tenant: str
    kind: RecommendationKind
    subject: str  # what it is about: a GPU model, a workload, a budget scope
    saving_usd_per_month: float
    source_cost_usd_per_month: float  # the cost the saving comes from
    confidence: Confidence
    summary: str
    evidence: Evidence = field(default_factory=dict)
    window_seconds: float = 0.0  # how long the evidence was observed


# --- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdleGpuFinding:
    """A tenant's idle GPUs of one model (from the report's idle detection)."""

    tenant: str
    gpu_model: str
    idle_gpus: float
    idle_usd_per_hour: float
    gpu_usd_per_hour: float  # the tenant's whole GPU cost rate on this model
    idle_for_seconds: float


@dataclass(frozen=True, slots=True)
class GpuWorkload:
    """One workload's GPU holding (e.g. a Deployment's pods) over an observation window."""

    tenant: str
    workload: str
    gpu_model: str
    gpus: float  # GPU-equivalents held (a MIG slice counts as its fraction)
    usd_per_hour: float  # what it costs now
    window_seconds: float
    peak_utilization: float | None = None  # 0-1, peak over the window
    peak_memory_gb: float | None = None  # peak framebuffer used, all its GPUs together
    labels: Mapping[str, str] = field(default_factory=dict)
    purchase_option: Literal["on_demand", "spot"] = "on_demand"


@dataclass(frozen=True, slots=True)
class GpuOption:
    """A GPU model or MIG slice one can move to. ``compute`` is relative throughput on one
    consistent scale (e.g. A100 = 1.0); ``usd_per_hour`` per unit."""

    name: str
    compute: float
    memory_gb: float
    usd_per_hour: float


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """A GPU model's capacity (from config); prices come from the pricer at run time."""

    name: str
    compute: float
    memory_gb: float
    mig_profiles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SpotPrice:
    on_demand_usd_per_hour: float
    spot_usd_per_hour: float


@dataclass(frozen=True, slots=True)
class RecommendationPolicy:
    min_saving_usd_per_month: float = 0.0  # budget_at_risk is kept regardless
    idle_gpu: bool = True
    rightsize: bool = True
    rightsize_headroom: float = 0.8  # peak use must fit in this fraction of the option
    spot: bool = True
    spot_label_key: str = "aifinops.io/fault-tolerant"
    spot_label_value: str = "true"
    model_switch: bool = True
    budget_at_risk: bool = True


# --- helpers -------------------------------------------------------------------------------


def window_confidence(window_seconds: float) -> Confidence:
    """``high`` for ≥ 7 days of evidence, ``medium`` for ≥ 1 day, else ``low``."""
    if window_seconds >= WEEK_SECONDS:
        return "high"
    if window_seconds >= DAY_SECONDS:
        return "medium"
    return "low"


def _lower(c: Confidence) -> Confidence:
    return CONFIDENCE_LEVELS[max(0, CONFIDENCE_LEVELS.index(c) - 1)]


def _at_most(c: Confidence, cap: Confidence) -> Confidence:
    return CONFIDENCE_LEVELS[min(CONFIDENCE_LEVELS.index(c), CONFIDENCE_LEVELS.index(cap))]


def _finite_nonneg(x: float) -> float:
    return x if math.isfinite(x) and x > 0 else 0.0


def gpu_options(
    specs: Sequence[GpuSpec], price_of: Callable[[str], float | None]
) -> tuple[GpuOption, ...]:
    """Options for right-sizing: each priced GPU model, and each of its MIG profiles as a
    slice with the profile's fraction of compute and price and the profile's memory
    (``"3g.40gb"`` → 3/7 of an A100's compute and price, 40 GB). Unpriced models are skipped."""
    out: list[GpuOption] = []
    for spec in specs:
        price = price_of(spec.name)
        if price is None or not math.isfinite(price) or price < 0:
            continue
        out.append(GpuOption(spec.name, spec.compute, spec.memory_gb, price))
        for profile in spec.mig_profiles:
            frac = mig_fraction(profile, spec.name)
            mem = _profile_memory_gb(profile)
            out.append(
                GpuOption(
                    f"{spec.name} MIG {profile}",
                    spec.compute * frac,
                    mem if mem is not None else spec.memory_gb * frac,
                    price * frac,
                )
            )
    return tuple(out)


def _profile_memory_gb(profile: str) -> float | None:
    _, _, mem = profile.strip().lower().partition(".")
    if mem.endswith("gb"):
        try:
            return float(mem[:-2])
        except ValueError:
            return None
    return None


# --- the five kinds ------------------------------------------------------------------------


def recommend_idle_gpus(findings: Iterable[IdleGpuFinding]) -> list[Recommendation]:
    """Reclaim idle GPUs: saving = idle cost rate × hours per month (≤ the GPU cost)."""
    out = []
    for f in findings:
        source = _finite_nonneg(f.gpu_usd_per_hour) * HOURS_PER_MONTH
        saving = min(_finite_nonneg(f.idle_usd_per_hour) * HOURS_PER_MONTH, source)
        if saving <= 0:
            continue
        out.append(
            Recommendation(
                tenant=f.tenant,
                kind="idle_gpu",
                subject=f.gpu_model,
                saving_usd_per_month=saving,
                source_cost_usd_per_month=source,
                confidence=window_confidence(f.idle_for_seconds),
                summary=(
                    f"Reclaim {f.idle_gpus:g} idle {f.gpu_model} GPU(s) "
                    f"(idle for {f.idle_for_seconds / 3600:.1f} h)"
                ),
                evidence={
                    "idle_gpus": f.idle_gpus,
                    "idle_usd_per_hour": f.idle_usd_per_hour,
                    "gpu_usd_per_hour": f.gpu_usd_per_hour,
                    "idle_for_seconds": f.idle_for_seconds,
                },
                window_seconds=f.idle_for_seconds,
            )
        )
    return out


def recommend_rightsizing(
    workloads: Iterable[GpuWorkload], options: Sequence[GpuOption], headroom: float = 0.8
) -> list[Recommendation]:
    """Right-size workloads whose peak use fits a cheaper option (see the module docstring).
    Workloads without a peak utilization, or whose GPU model is not among ``options``, are
    skipped."""
    out = []
    # Each workload's option: the first whose normalized name is its model's, each name
    # normalized once (a regex per name; ~3,000 workloads a refresh at 2,000 tenants).
    first: dict[str, GpuOption] = {}
    for o in options:
        first.setdefault(normalize_gpu_model(o.name), o)
    normalized: dict[str, str] = {}
    for w in workloads:
        key = normalized.get(w.gpu_model)
        if key is None:
            key = normalized[w.gpu_model] = normalize_gpu_model(w.gpu_model)
        current = first.get(key)
        cost = _finite_nonneg(w.usd_per_hour)
        if current is None or w.peak_utilization is None or cost <= 0 or w.gpus <= 0:
            continue
        list_cost = w.gpus * current.usd_per_hour
        if list_cost <= 0:
            continue
        used = min(1.0, max(0.0, w.peak_utilization)) * w.gpus * current.compute
        fitting = [
            o
            for o in options
            if o.usd_per_hour < list_cost
            and used <= headroom * o.compute
            and (w.peak_memory_gb is None or w.peak_memory_gb <= o.memory_gb)
        ]
        if not fitting:
            continue
        best = min(fitting, key=lambda o: (o.usd_per_hour, o.name))
        new_cost = cost * best.usd_per_hour / list_cost
        saving = (cost - new_cost) * HOURS_PER_MONTH
        if saving <= 0:
            continue
        confidence = window_confidence(w.window_seconds)
        if w.peak_memory_gb is None:
            confidence = _lower(confidence)
        evidence: dict[str, float | str] = {
            "gpu_model": w.gpu_model,
            "gpus": w.gpus,
            "peak_utilization": w.peak_utilization,
            "option": best.name,
            "option_compute": best.compute,
            "option_memory_gb": best.memory_gb,
            "headroom": headroom,
            "usd_per_hour": cost,
            "new_usd_per_hour": new_cost,
        }
        if w.peak_memory_gb is not None:
            evidence["peak_memory_gb"] = w.peak_memory_gb
        out.append(
            Recommendation(
                tenant=w.tenant,
                kind="rightsize",
                subject=w.workload,
                saving_usd_per_month=saving,
                source_cost_usd_per_month=cost * HOURS_PER_MONTH,
                confidence=confidence,
                summary=(
                    f"Move {w.workload} from {w.gpus:g} x {w.gpu_model} to {best.name} "
                    f"(peak utilization {w.peak_utilization:.0%})"
                ),
                evidence=evidence,
                window_seconds=w.window_seconds,
            )
        )
    return out


def recommend_spot(
    workloads: Iterable[GpuWorkload],
    spot_prices: Callable[[str], SpotPrice | None],
    label_key: str = "aifinops.io/fault-tolerant",
    label_value: str = "true",
) -> list[Recommendation]:
    """Move on-demand workloads labelled ``label_key=label_value`` to spot GPUs."""
    out = []
    for w in workloads:
        if w.labels.get(label_key) != label_value or w.purchase_option == "spot":
            continue
        price = spot_prices(w.gpu_model)
        cost = _finite_nonneg(w.usd_per_hour)
        if price is None or cost <= 0:
            continue
        od, spot = price.on_demand_usd_per_hour, max(0.0, price.spot_usd_per_hour)
        if not (math.isfinite(od) and od > 0 and spot < od):
            continue
        discount = 1.0 - spot / od
        out.append(
            Recommendation(
                tenant=w.tenant,
                kind="spot",
                subject=w.workload,
                saving_usd_per_month=cost * discount * HOURS_PER_MONTH,
                source_cost_usd_per_month=cost * HOURS_PER_MONTH,
                confidence=_at_most(window_confidence(w.window_seconds), "medium"),
                summary=(
                    f"Run fault-tolerant {w.workload} on spot {w.gpu_model} "
                    f"({discount:.0%} below on-demand)"
                ),
                evidence={
                    "gpu_model": w.gpu_model,
                    "gpus": w.gpus,
                    "usd_per_hour": cost,
                    "on_demand_usd_per_hour": od,
                    "spot_usd_per_hour": spot,
                    "discount_ratio": discount,
                },
                window_seconds=w.window_seconds,
            )
        )
    return out


def recommend_model_switches(
    results: Iterable[RoutingResult], window_seconds: float
) -> list[Recommendation]:
    """Switch workloads to their recommended model where that saves money.
    ``window_seconds`` is how long the token volume was observed."""
    out = []
    for r in results:
        best = r.recommended
        if (
            best is None
            or r.current_model is None
            or best.model == r.current_model
            or r.monthly_savings_usd is None
            or r.current_monthly_cost_usd is None
            or r.current_cost_usd_per_million is None
        ):
            continue
        source = _finite_nonneg(r.current_monthly_cost_usd)
        saving = min(_finite_nonneg(r.monthly_savings_usd), source)
        if saving <= 0:
            continue
        confidence = window_confidence(window_seconds)
        if r.current_quality is not None and best.quality < r.current_quality:
            confidence = _lower(confidence)
        evidence: dict[str, float | str] = {
            "current_model": r.current_model,
            "current_usd_per_million": r.current_cost_usd_per_million,
            "recommended_model": best.model,
            "recommended_provider": best.provider,
            "recommended_usd_per_million": best.cost_usd_per_million,
            "recommended_quality": best.quality,
            "recommended_score": best.score,
            "monthly_tokens": r.monthly_tokens,
        }
        if r.current_quality is not None:
            evidence["current_quality"] = r.current_quality
        out.append(
            Recommendation(
                tenant=r.tenant,
                kind="model_switch",
                subject=r.workload,
                saving_usd_per_month=saving,
                source_cost_usd_per_month=source,
                confidence=confidence,
                summary=f"Route {r.workload} from {r.current_model} to {best.model}",
                evidence=evidence,
                window_seconds=window_seconds,
            )
        )
    return out


def recommend_budget_risks(statuses: Iterable[BudgetStatus]) -> list[Recommendation]:
    """A warning (saving 0) for each budget whose month-end forecast exceeds it."""
    out = []
    for s in statuses:
        if not s.forecast_usd > s.budget_usd:
            continue
        fc = s.forecast
        confidence: Confidence = "low"
        if fc.method == "theil_sen":
            confidence = "high" if fc.history_days >= 7 else "medium"
        evidence: dict[str, float | str] = {
            "scope": s.scope,
            "budget_usd": s.budget_usd,
            "spend_usd": s.spend_usd,
            "forecast_usd": s.forecast_usd,
            "state": s.state,
            "forecast_method": fc.method,
            "history_days": float(fc.history_days),
        }
        if s.days_to_exhaustion is not None:
            evidence["days_to_exhaustion"] = s.days_to_exhaustion
        out.append(
            Recommendation(
                tenant=s.tenant,
                kind="budget_at_risk",
                subject=s.scope,
                saving_usd_per_month=0.0,
                source_cost_usd_per_month=s.spend_usd,
                confidence=confidence,
                summary=(
                    f"Budget ({s.scope}) of {s.budget_usd:.2f} USD is forecast to reach "
                    f"{s.forecast_usd:.2f} USD by month end"
                ),
                evidence=evidence,
                window_seconds=fc.history_days * DAY_SECONDS,
            )
        )
    return out


# --- assembling ----------------------------------------------------------------------------


def cap_to_spend(
    recommendations: Iterable[Recommendation], tenant_monthly_spend: Mapping[str, float]
) -> tuple[Recommendation, ...]:
    """Scale each tenant's savings down proportionally so they sum to at most its monthly
    spend (USD/month; a tenant missing from the map has spend 0). Order is preserved."""
    recs = list(recommendations)
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        by_tenant[r.tenant].append(i)
    for tenant, idx in by_tenant.items():
        savings = [recs[i].saving_usd_per_month for i in idx]
        if not any(savings):
            # All 0 (budget warnings): their sum, 0, is within any spend (spend >= 0), so
            # the spend is not read (a sum over the tenant's rates, ~2,000 tenants).
            continue
        spend = _finite_nonneg(tenant_monthly_spend.get(tenant, 0.0))
        total = math.fsum(savings)
        if total <= spend:
            continue
        factor = spend / total
        # Float rounding can leave the scaled sum a hair above the spend: step the factor
        # down by one ulp until it is not.
        while math.fsum(s * factor for s in savings) > spend:
            factor = math.nextafter(factor, 0.0)
        for i in idx:
            r = recs[i]
            recs[i] = replace(
                r,
                saving_usd_per_month=r.saving_usd_per_month * factor,
                evidence={**r.evidence, "scaled_by": factor},
            )
    return tuple(recs)


def build_recommendations(
    policy: RecommendationPolicy,
    tenant_monthly_spend: Mapping[str, float],
    *,
    idle: Iterable[IdleGpuFinding] = (),
    workloads: Sequence[GpuWorkload] = (),
    options: Sequence[GpuOption] = (),
    spot_prices: Callable[[str], SpotPrice | None] | None = None,
    routing: Iterable[RoutingResult] = (),
    routing_window_seconds: float = 0.0,
    budgets: Iterable[BudgetStatus] = (),
) -> tuple[Recommendation, ...]:
    """Every enabled kind, capped per tenant (:func:`cap_to_spend`), filtered by the policy's
    minimum saving (``budget_at_risk`` always kept), sorted by saving descending then tenant,
    kind and subject."""
    recs: list[Recommendation] = []
    if policy.idle_gpu:
        recs += recommend_idle_gpus(idle)
    if policy.rightsize:
        recs += recommend_rightsizing(workloads, options, policy.rightsize_headroom)
    if policy.spot and spot_prices is not None:
        recs += recommend_spot(
            workloads, spot_prices, policy.spot_label_key, policy.spot_label_value
        )
    if policy.model_switch:
        recs += recommend_model_switches(routing, routing_window_seconds)
    if policy.budget_at_risk:
        recs += recommend_budget_risks(budgets)
    capped = cap_to_spend(recs, tenant_monthly_spend)
    kept = [
        r
        for r in capped
        if r.kind == "budget_at_risk" or r.saving_usd_per_month >= policy.min_saving_usd_per_month
    ]
    kept.sort(key=lambda r: (-r.saving_usd_per_month, r.tenant, r.kind, r.subject))
    return tuple(kept)


def filter_recommendations(
    recommendations: Iterable[Recommendation],
    tenant: str | None = None,
    kind: RecommendationKind | None = None,
    min_saving_usd_per_month: float = 0.0,
) -> tuple[Recommendation, ...]:
    """The API's filter: by tenant, by kind, and by minimum monthly saving (inclusive)."""
    return tuple(
        r
        for r in recommendations
        if (tenant is None or r.tenant == tenant)
        and (kind is None or r.kind == kind)
        and r.saving_usd_per_month >= min_saving_usd_per_month
    )
