"""The oracle for the family builders: ``aifinops.exposition.families`` as it was before the page
was built column by column with orders and fold groups kept between refreshes (issue 16),
kept unchanged so that the new path is proven equal to it (test_page_oracle.py). Tests
only; not maintained beyond that role.

The original docstring follows.

Map a Report and the refresh status to catalog families (samples sorted, deterministic).

The large families (per tenant × resource × basis, per tenant × model × token type: tens of
thousands of samples at fleet scale) are built without a Python loop per sample: a mapping's
items are sorted by key alone (``key=`` the first item, so the sort compares label tuples of
strings, about twice as fast as comparing ``(labels, value)`` pairs) and the samples are
zipped from C-level maps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Protocol

from aifinops.exposition import catalog as c
from aifinops.exposition.render import Family, Sample
from aifinops.model.budgets import BUDGET_STATES, GLOBAL_TENANT
from aifinops.model.energy import EnergyReport
from aifinops.model.finance import FinanceReport
from aifinops.model.owned_prices import OwnedHourlyCost
from aifinops.model.report import Report
from aifinops.model.roi import BENEFIT_KINDS
from aifinops.model.tokens import TokenReport
from aifinops.status import REASONS, RefreshStatus


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    rules_version: str
    gpu_price_catalog_version: str
    revision: str = "unknown"  # the source commit (aifinops.version.revision)


# The model keeps days (its API answers in days); series are in seconds, the base unit.
SECONDS_PER_DAY = 86_400.0
SECONDS_PER_HOUR = 3_600.0

_first = itemgetter(0)
_second = itemgetter(1)


def _sorted_samples(items: Iterable[Sample]) -> list[Sample]:
    """A mapping's ``items()`` as samples sorted by labels (the labels are unique keys, so
    the order is the one ``sorted(items)`` gives)."""
    return sorted(items, key=_first)


def cost_families(report: Report | None, finance: FinanceReport | None = None) -> list[Family]:
    """The model's families: ``report``'s, then ``finance``'s (built from that report, and
    absent when the finance step did not run or failed)."""
    if report is None:
        return []
    # One family per basis: sum() over a family is the cluster total (see the catalog).
    rate = _sorted_samples(report.tenant_rates("allocation").items())
    usage_rate = _sorted_samples(report.tenant_rates("usage").items())
    accrued: dict[str, list[Sample]] = {basis: [] for basis in c.BASES}
    for (tenant, resource, basis), usd in report.accrued.items():
        accrued[basis].append(((tenant, resource), usd))
    total = _sorted_samples(accrued["allocation"])
    usage_total = _sorted_samples(accrued["usage"])
    cluster = [((r,), v) for r, v in sorted(report.cost.cluster.items())]

    stats = sorted(report.gpu_stats.items(), key=_first)
    keys = list(map(_first, stats))
    rows = list(map(_second, stats))

    def gpu_samples(field: str) -> list[Sample]:
        return list(zip(keys, map(attrgetter(field), rows), strict=True))

    held = gpu_samples("held")
    used = gpu_samples("used")
    unused = gpu_samples("unused_rate")
    idle_n = gpu_samples("idle_gpus")
    idle_cost = gpu_samples("idle_rate")
    eff = [((t,), v) for t, v in sorted(report.efficiency.items())]
    prices = [((m, src), v) for (m, src), v in sorted(report.cost.gpu_prices.items())]
    owned, owned_info = _owned_samples(report.cost.owned_prices)
    folded = [((), float(report.cost.folded_tenants))]
    dcgm_metrics = [((m,), float(n)) for m, n in sorted(report.cost.utilization_metrics.items())]
    by_method = report.cost.method_rates
    alloc_method = _sorted_samples(by_method.get("allocation", {}).items())
    usage_method = _sorted_samples(by_method.get("usage", {}).items())
    split = [((m,), v) for m, v in sorted(split_method_totals(report).items())]
    return [
        Family(c.TENANT_COST_RATE, rate),
        Family(c.TENANT_COST_TOTAL, total),
        Family(c.TENANT_USAGE_COST_RATE, usage_rate),
        Family(c.TENANT_USAGE_COST_TOTAL, usage_total),
        Family(c.CLUSTER_COST_RATE, cluster),
        Family(c.TENANT_GPUS, held),
        Family(c.TENANT_GPUS_USED, used),
        Family(c.TENANT_GPU_EFFICIENCY, eff),
        Family(c.TENANT_GPU_UNUSED_COST, unused),
        Family(c.TENANT_GPU_COST_BY_METHOD, alloc_method),
        Family(c.TENANT_USAGE_GPU_COST_BY_METHOD, usage_method),
        Family(c.IDLE_GPUS, idle_n),
        Family(c.IDLE_GPU_COST, idle_cost),
        Family(c.GPU_PRICE, prices),
        Family(c.OWNED_GPU_PRICE, owned),
        Family(c.OWNED_GPU_PRICE_INFO, owned_info),
        Family(c.FOLDED_TENANTS, folded),
        Family(c.DCGM_UTILIZATION_GPUS, dcgm_metrics),
        Family(c.GPU_SPLIT_COST, split),
        Family(c.HAMI_HELD_PODS, [((), float(report.cost.held_unmeasured))]),
        *token_families(report.tokens),
        *finance_families(finance),
        *energy_families(report.energy),
    ]


def split_method_totals(report: Report) -> dict[str, float]:
    """The cluster's GPU USD/hour per split method: the usage basis where it is published,
    else the allocation basis (every method listed, 0 where none)."""
    rates = report.cost.method_rates
    chosen = rates.get("usage") or rates.get("allocation") or {}
    parts: dict[str, list[float]] = {m: [] for m in c.SPLIT_METHODS}
    for (_, method), value in chosen.items():
        parts.setdefault(method, []).append(value)
    return {m: math.fsum(v) for m, v in parts.items()}


def energy_families(e: EnergyReport | None) -> list[Family]:
    """Energy, its cost and its carbon per tenant with the fleet's totals; none unless
    ``energy.enabled``. Rates only while an interval is measured; totals always."""
    if e is None:
        return []

    def per_tenant(values: Mapping[str, float], scale: float = 1.0) -> list[Sample]:
        return [((t,), v * scale) for t, v in sorted(values.items())]

    def total(values: Mapping[str, float], scale: float = 1.0) -> list[Sample]:
        return [((), math.fsum(values.values()) * scale)]

    out = [
        Family(c.TENANT_GPU_ENERGY, per_tenant(e.joules)),
        Family(c.CLUSTER_GPU_ENERGY, total(e.joules)),
        Family(c.TENANT_ENERGY_COST_TOTAL, per_tenant(e.usd)),
        Family(c.CLUSTER_ENERGY_COST_TOTAL, total(e.usd)),
        Family(c.TENANT_CARBON_TOTAL, per_tenant(e.grams)),
        Family(c.CLUSTER_CARBON_TOTAL, total(e.grams)),
        Family(c.TENANT_ENERGY_MONTH_TO_DATE, per_tenant(e.month_usd)),
        Family(c.CLUSTER_ENERGY_MONTH_TO_DATE, total(e.month_usd)),
        Family(c.TENANT_CARBON_MONTH_TO_DATE, per_tenant(e.month_grams)),
        Family(c.CLUSTER_CARBON_MONTH_TO_DATE, total(e.month_grams)),
        Family(
            c.TENANT_ENERGY_BUDGET,
            [((t,), b.usd) for t, b in sorted(e.budgets.items()) if b.usd is not None],
        ),
        Family(
            c.TENANT_CARBON_BUDGET,
            [((t,), b.grams) for t, b in sorted(e.budgets.items()) if b.grams is not None],
        ),
        Family(c.ENERGY_PRICE, [((), e.price_usd_per_kwh)]),
        Family(c.GRID_CARBON_INTENSITY, [((), e.grams_per_kwh)]),
        Family(c.ENERGY_PUE, [((), e.pue)]),
        Family(c.ENERGY_COUNTER_RESETS, [((), float(e.counter_resets))]),
    ]
    i = e.interval
    if i is not None and i.seconds > 0:
        hourly = SECONDS_PER_HOUR / i.seconds
        out += [
            Family(c.TENANT_GPU_POWER, per_tenant(i.joules, 1.0 / i.seconds)),
            Family(c.CLUSTER_GPU_POWER, total(i.joules, 1.0 / i.seconds)),
            Family(c.TENANT_ENERGY_COST_RATE, per_tenant(i.usd, hourly)),
            Family(c.CLUSTER_ENERGY_COST_RATE, total(i.usd, hourly)),
            Family(c.TENANT_CARBON_RATE, per_tenant(i.grams, hourly)),
            Family(c.CLUSTER_CARBON_RATE, total(i.grams, hourly)),
            Family(c.ENERGY_GPUS, [((m,), float(n)) for m, n in sorted(i.methods.items())]),
        ]
    return out


def _owned_samples(rows: Iterable[OwnedHourlyCost]) -> tuple[list[Sample], list[Sample]]:
    """The owned price by component, and the inputs as labels (numbers as %g: 30000, 0.5)."""
    price: list[Sample] = []
    info: list[Sample] = []
    for r in rows:
        s = r.spec
        price += [
            ((s.pool, s.gpu_model, "capital"), r.capital),
            ((s.pool, s.gpu_model, "hosting"), r.hosting),
            ((s.pool, s.gpu_model, "support"), r.support),
        ]
        labels = (
            s.pool,
            s.gpu_model,
            s.node_pattern or "",
            s.purchase_date,
            f"{s.purchase_usd:.12g}",
            s.method,
            f"{s.life_years:.12g}",
            f"{s.residual_usd:.12g}",
            f"{s.support_usd_per_year:.12g}",
            f"{s.hosting_usd_per_gpu_month:.12g}",
            r.precedence,
        )
        info.append((labels, 1.0))
    return _sorted_samples(price), _sorted_samples(info)


def finance_families(f: FinanceReport | None) -> list[Family]:
    """Month to date, budgets, ROI, routing and recommendation series; none when the
    finance step did not run."""
    if f is None:
        return []
    mtd = [((t,), v) for t, v in sorted(f.tenant_month_to_date.items())]
    # Per family: budget, spend and forecast per (owner, scope); the ratio families per owner
    # (tenant budgets, or the global budget's own families: see the catalog).
    money: dict[tuple[str, str, str], list[Sample]] = {k: [] for k in c.BUDGET_MONEY}
    other: dict[tuple[str, str], list[Sample]] = {k: [] for k in c.BUDGET_RATIOS}
    for b in sorted(f.budgets, key=lambda b: (b.tenant, b.scope)):
        owner = "cluster" if b.tenant == GLOBAL_TENANT else "tenant"
        who: tuple[str, ...] = () if owner == "cluster" else (b.tenant,)
        money[(owner, b.scope, "budget")].append((who, b.budget_usd))
        money[(owner, b.scope, "spend")].append((who, b.spend_usd))
        money[(owner, b.scope, "forecast")].append((who, b.forecast_usd))
        key = (*who, b.scope)
        if b.used_ratio is not None:
            other[(owner, "used")].append((key, b.used_ratio))
        if b.days_to_exhaustion is not None:
            other[(owner, "exhaustion")].append((key, b.days_to_exhaustion * SECONDS_PER_DAY))
        other[(owner, "warning")].append((key, b.warning))
        other[(owner, "critical")].append((key, b.critical))
        for s in BUDGET_STATES:
            other[(owner, "state")].append(((*key, s), 1.0 if s == b.state else 0.0))
    budget_families = [Family(spec, money[k]) for k, spec in c.BUDGET_MONEY.items()]
    budget_families += [Family(spec, sorted(other[k])) for k, spec in c.BUDGET_RATIOS.items()]
    roi: list[Sample] = []
    benefit: list[Sample] = []
    cost: list[Sample] = []
    payback: list[Sample] = []
    for i in sorted(f.initiatives, key=lambda i: i.name):
        r = i.result
        if r.roi_ratio is not None:
            roi.append(((i.name,), r.roi_ratio))
        for kind in BENEFIT_KINDS:
            benefit.append(((i.name, kind), r.breakdown[kind]))
        cost.append(((i.name,), r.ai_cost.total_usd))
        if r.payback_days is not None:
            payback.append(((i.name,), r.payback_days * SECONDS_PER_DAY))
    score: list[Sample] = []
    recommended: list[Sample] = []
    savings: list[Sample] = []
    for w in sorted(f.routing, key=lambda w: w.workload):
        best = w.recommended.model if w.recommended else None
        for cand in sorted(w.ranked, key=lambda c: c.model):
            score.append(((w.workload, cand.model), cand.score))
            recommended.append(((w.workload, cand.model), 1.0 if cand.model == best else 0.0))
        if w.monthly_savings_usd is not None:
            savings.append(((w.workload,), w.monthly_savings_usd))
    by_kind: dict[tuple[str, str], list[float]] = {}
    for rec in f.recommendations:
        by_kind.setdefault((rec.kind, rec.tenant), []).append(rec.saving_usd_per_month)
    rec_savings = [(k, math.fsum(v)) for k, v in sorted(by_kind.items())]
    return [
        Family(c.TENANT_MONTH_TO_DATE, mtd),
        *budget_families,
        Family(c.ROI_RATIO, roi),
        Family(c.ROI_BENEFIT, benefit),
        Family(c.ROI_COST, cost),
        Family(c.ROI_PAYBACK, payback),
        Family(c.ROUTING_SCORE, score),
        Family(c.ROUTING_RECOMMENDED, recommended),
        Family(c.ROUTING_SAVINGS, savings),
        Family(c.RECOMMENDATION_SAVINGS, rec_savings),
    ]


def token_families(tokens: TokenReport | None) -> list[Family]:
    """Token series; none when token analytics is off."""
    if tokens is None:
        return []
    info = [((tokens.catalog_version,), 1.0)] if tokens.catalog_version else []
    return [
        Family(c.TOKENS, _sorted_samples(tokens.tokens.items())),
        Family(c.TOKEN_COST, _sorted_samples(tokens.cost.items())),
        Family(c.MODEL_TOKEN_PRICE, _sorted_samples(tokens.prices.items())),
        Family(c.MODEL_API_EQUIVALENT_PRICE, _sorted_samples(tokens.api_equivalent.items())),
        Family(c.UNPRICED_TOKENS, _sorted_samples(tokens.unpriced.items())),
        Family(c.LLM_PRICE_CATALOG_INFO, info),
    ]


class StateSaves(Protocol):
    """The state file's record of its writes (``statefile.StateStore``), known by shape only."""

    @property
    def save_errors(self) -> int: ...

    @property
    def last_save(self) -> float | None: ...


def state_families(store: StateSaves) -> list[Family]:
    """The state file's self-metrics: failed writes, and the time of the last good one once
    there has been one."""
    out = [Family(c.STATE_SAVE_ERRORS, [((), float(store.save_errors))])]
    if store.last_save is not None:
        out.append(Family(c.STATE_LAST_SAVE, [((), store.last_save)]))
    return out


class ReloadState(Protocol):
    """The configuration reload's outcome (``web.lifecycle.Reloader``), known by shape only."""

    @property
    def successful(self) -> bool: ...

    @property
    def success_timestamp(self) -> float: ...


def reload_families(reload: ReloadState) -> list[Family]:
    """Whether the last configuration reload worked, and when the configuration in force
    was loaded (start-up or the last good reload)."""
    return [
        Family(c.CONFIG_RELOAD_SUCCESS, [((), 1.0 if reload.successful else 0.0)]),
        Family(c.CONFIG_RELOAD_TIMESTAMP, [((), reload.success_timestamp)]),
    ]


def self_families(status: RefreshStatus | None, build: BuildInfo) -> list[Family]:
    families = [
        Family(
            c.BUILD_INFO,
            [
                (
                    (
                        build.version,
                        build.rules_version,
                        build.gpu_price_catalog_version,
                        build.revision,
                    ),
                    1.0,
                )
            ],
        )
    ]
    if status is None:
        return families
    up: list[Sample] = []
    age: list[Sample] = []
    stale: list[Sample] = []
    duration: list[Sample] = []
    errors: list[Sample] = []
    for s in sorted(status.sources, key=lambda s: s.name):
        up.append(((s.name,), 1.0 if s.up else 0.0))
        if s.age_seconds is not None:
            age.append(((s.name,), s.age_seconds))
        stale.append(((s.name,), 1.0 if s.stale else 0.0))
        duration.append(((s.name,), s.duration_seconds))
        # Every reason is always present (0 until it happens), so rate() works from the start.
        for reason in REASONS:
            errors.append(((s.name, reason), float(s.errors.get(reason, 0))))
    families += [
        Family(c.SOURCE_UP, up),
        Family(c.SOURCE_AGE, age),
        Family(c.SOURCE_STALE, stale),
        Family(c.SOURCE_ERRORS, errors),
        Family(c.SOURCE_DURATION, duration),
        Family(c.REFRESH_DURATION, [((), status.duration_seconds)]),
        Family(c.REFRESH_TIMESTAMP, [((), status.completed_at)]),
        Family(c.REFRESHES, [((), float(status.refreshes))]),
    ]
    return families
