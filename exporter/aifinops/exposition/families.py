"""Map a Report and the refresh status to catalog families (samples sorted, deterministic).

The large families (per tenant × resource × basis, per tenant × model × token type: tens of
thousands of samples at fleet scale) are built column by column (:class:`Columns`: the label
tuples and the values, no tuple per sample) without a Python loop per sample. Their key sets
rarely change between refreshes, so each one's sorted order is kept (:func:`_ordered`) and a
steady refresh only permutes its values: the same keys are recognised by one C-level
comparison (same iteration order) or found by hash (another order), and a changed key set is
sorted again under a new key-set token, which the cap and the renderer key their own kept
work on. The small families are still built sample by sample.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from aifinops.exposition import catalog as c
from aifinops.exposition.render import Columns, Family, Sample
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
_third = itemgetter(2)


def _sorted_samples(items: Iterable[Sample]) -> list[Sample]:
    """A mapping's ``items()`` as samples sorted by labels (the labels are unique keys, so
    the order is the one ``sorted(items)`` gives)."""
    return sorted(items, key=_first)


@dataclass(frozen=True, slots=True)
class _Order:
    """How one site's mapping was last sorted: ``perm[i]`` is the position, in the mapping's
    iteration order, of the ``i``-th key in sorted order; ``keys`` the keys in that order
    (this refresh's objects, so the cache holds no older generation of them); ``labels`` the
    label tuples published for them (``keys`` itself when the keys are label tuples);
    ``key`` the key-set token handed on in :class:`Columns`."""

    perm: array[int]
    keys: list[Any]
    labels: list[tuple[str, ...]]
    key: object


_NONE = Columns((), ())

# One entry per site (a family built from a mapping): the current page's, replaced whole so
# that a render on the side thread reads a consistent entry.
_ORDERS: dict[str, _Order] = {}


def _ordered(
    site: str,
    keys: list[Any],
    then_by: Callable[[Any], Any] | None = None,
    labels_of: Callable[[list[Any]], list[tuple[str, ...]]] | None = None,
) -> _Order:
    """The sorted order of ``keys`` (a mapping's keys, unique; then stably by ``then_by`` of
    each where given), and their labels (``labels_of`` the sorted keys; the keys themselves
    by default). Reused from the last call for ``site`` when the same keys come in the same
    iteration order (the model builds its mappings the same way every refresh): then there
    is no sort and no label to build, only a C-level permutation and comparison; the same
    keys in another order are found by hash. A key set that changed is sorted again under a
    new token. Everything per key is C-level (keys, not Python functions, are compared)."""
    order = _ORDERS.get(site)
    if order is not None and len(order.perm) == len(keys):
        perm: array[int] | None = order.perm
        ranked = list(map(keys.__getitem__, order.perm))
        if ranked != order.keys:
            # The same keys in another iteration order (the model's mappings follow the
            # order of the upstream's rows): each found by hash instead of sorting again.
            position = dict(zip(keys, range(len(keys)), strict=True))
            try:
                perm = array("i", map(position.__getitem__, order.keys))
            except KeyError:
                perm = None  # another key set
            else:
                ranked = list(map(keys.__getitem__, perm))
        if perm is not None:
            labels = ranked if labels_of is None else order.labels
            order = _Order(perm, ranked, labels, order.key)
            _ORDERS[site] = order
            return order
    positions = sorted(range(len(keys)), key=keys.__getitem__)
    if then_by is not None:
        positions.sort(key=list(map(then_by, keys)).__getitem__)  # stable
    perm = array("i", positions)
    ranked = list(map(keys.__getitem__, perm))
    labels = ranked if labels_of is None else labels_of(ranked)
    order = _Order(perm, ranked, labels, object())
    _ORDERS[site] = order
    return order


def _columns(site: str, mapping: Mapping[Any, float], *, single: bool = False) -> Columns:
    """A mapping as samples sorted by key (``_sorted_samples(mapping.items())``), column by
    column; ``single``: its keys are single label values (a tenant), not label tuples."""
    order = _ordered(site, list(mapping), labels_of=_singles if single else None)
    values = list(mapping.values())
    return Columns(order.labels, list(map(values.__getitem__, order.perm)), order.key)


def _singles(values: list[str]) -> list[tuple[str, ...]]:
    return list(zip(values))  # one 1-tuple per value


def _tenant_resource(keys: list[tuple[str, str, str]]) -> list[tuple[str, ...]]:
    return list(map(_first_two, keys))


_first_two = itemgetter(0, 1)


def _accrued_columns(accrued: Mapping[tuple[str, str, str], float]) -> dict[str, Columns]:
    """``accrued`` split per basis, each sorted by (tenant, resource): one order of the whole
    mapping by (tenant, resource, basis), then stably by basis, cut where the basis
    changes."""
    order = _ordered("accrued", list(accrued), _third, _tenant_resource)
    values = list(accrued.values())
    ranked = list(map(values.__getitem__, order.perm))
    bases = list(map(_third, order.keys))
    out: dict[str, Columns] = {}
    start = 0
    while start < len(bases):
        basis = bases[start]
        end = start + bases[start:].count(basis)  # one run per basis in this order
        out[basis] = Columns(order.labels[start:end], ranked[start:end], (order.key, basis))
        start = end
    return out


def cost_families(report: Report | None, finance: FinanceReport | None = None) -> list[Family]:
    """The model's families: ``report``'s, then ``finance``'s (built from that report, and
    absent when the finance step did not run or failed)."""
    if report is None:
        return []
    # One family per basis: sum() over a family is the cluster total (see the catalog).
    # The large families are built column by column in an order kept between refreshes
    # while their key sets do not change (_ordered).
    rate = _columns("rate:allocation", report.tenant_rates("allocation"))
    usage_rate = _columns("rate:usage", report.tenant_rates("usage"))
    accrued = _accrued_columns(report.accrued)
    total = accrued.get("allocation", _NONE)
    usage_total = accrued.get("usage", _NONE)
    cluster = [((r,), v) for r, v in sorted(report.cost.cluster.items())]

    stats = _ordered("gpu_stats", list(report.gpu_stats))
    rows = list(report.gpu_stats.values())
    rows = list(map(rows.__getitem__, stats.perm))

    def gpu_samples(field: str) -> Columns:
        return Columns(stats.labels, list(map(attrgetter(field), rows)), stats.key)

    held = gpu_samples("held")
    used = gpu_samples("used")
    unused = gpu_samples("unused_rate")
    idle_n = gpu_samples("idle_gpus")
    idle_cost = gpu_samples("idle_rate")
    eff = _columns("efficiency", report.efficiency, single=True)
    prices = [((m, src), v) for (m, src), v in sorted(report.cost.gpu_prices.items())]
    owned, owned_info = _owned_samples(report.cost.owned_prices)
    folded = [((), float(report.cost.folded_tenants))]
    dcgm_metrics = [((m,), float(n)) for m, n in sorted(report.cost.utilization_metrics.items())]
    by_method = report.cost.method_rates
    alloc_method = _columns("method:allocation", by_method.get("allocation", {}))
    usage_method = _columns("method:usage", by_method.get("usage", {}))
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
    mtd = _columns("month_to_date", f.tenant_month_to_date, single=True)
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
        Family(c.TOKENS, _columns("tokens", tokens.tokens)),
        Family(c.TOKEN_COST, _columns("token_cost", tokens.cost)),
        Family(c.MODEL_TOKEN_PRICE, _columns("token_price", tokens.prices)),
        Family(c.MODEL_API_EQUIVALENT_PRICE, _columns("api_equivalent", tokens.api_equivalent)),
        Family(c.UNPRICED_TOKENS, _columns("unpriced", tokens.unpriced)),
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
