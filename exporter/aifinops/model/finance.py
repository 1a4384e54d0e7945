"""Finance figures from one :class:`~aifinops.model.report.Report`: month-to-date spend,
budgets and forecast, ROI per initiative, model routing, recommendations, and the exporter's
own ledger of accrued dollars per calendar period (for chargeback). Pure: ``now``, the time
zone and every input are arguments; :class:`FinanceState` carries what must survive between
refreshes and is owned by the refresh loop.

The same :class:`FinanceReport` feeds ``/metrics`` and ``/api/v1/*``, so both always agree.

Month-to-date spend per (tenant, resource), allocation basis, in the configured time zone
------------------------------------------------------------------------------------------
* **Infrastructure** (gpu, cpu, ram, storage, network, shared): OpenCost's daily sets since
  the month start (``opencost_month``: ``window=<start>,<now>``, ``step=1d``,
  ``accumulate=false``), each pod's row booked to its tenant by the tenancy rules, OpenCost's
  ``__idle__`` row to ``__idle__``. A set counts for the local date of its midpoint. The time
  since that query ran (it runs every ``budgets.refresh_interval_seconds``) is covered by the
  current cost rate (before charge-back) × the elapsed time, booked to today.
* **Self-hosted charge-back**: the dollars the token charge-back moved from the serving pods'
  owner to the tenants that sent tokens (``Report.charge_back`` × the time between refreshes),
  kept on their resource (gpu, cpu, ram) as in ``aifinops_tenant_cost_usd_*``.
* **Tokens** (resource ``tokens``): API token dollars the exporter counted since the month
  started (increments of the cumulative API cost).

Restarts: charge-back and token dollars are what the exporter counted. Without a state file
they count again from zero after a restart (the months' infrastructure part does not: OpenCost
keeps it), so token and charge-back month-to-date figures are low by what accrued before the
restart, and the days before it carry no token dollars in the forecast's daily series. With
``state.path`` the refresh loop restores :class:`FinanceState` (and the token counters' last
values) at start-up; :mod:`aifinops.statefile` states what that guarantees. Two replicas each
keep their own figures.

Per-period ledger (chargeback)
------------------------------
``FinanceReport.periods[YYYY-MM][(tenant, resource, basis)]`` are the increments of the
exporter's counters (``aifinops_tenant_cost_usd_total``) accrued in that calendar month (an
interval that crosses a month boundary is split in proportion to time): exactly what
``increase()`` over the period shows for a process that ran through it. The current month and
the ``history_months − 1`` before it are kept (in memory, and in the state file when configured).

Money is float USD (gauges); sums use :func:`math.fsum`.
"""

from __future__ import annotations

import functools
import math
from array import array
from collections import Counter, defaultdict
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from itertools import chain, compress, filterfalse, repeat
from operator import attrgetter, eq, is_, itemgetter, methodcaller, ne, or_
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

import numpy as np

from aifinops.model.budgets import (
    GLOBAL_TENANT,
    Budget,
    BudgetScope,
    BudgetStatus,
    evaluate_budget_fitted,
    scopes_of,
)
from aifinops.model.calendar import MonthBounds, month_bounds
from aifinops.model.chargeback import Quantity, current_period, parse_period
from aifinops.model.cost import tenant_of

# Re-exported: the finance step's types are read from here by its callers.
from aifinops.model.finance_types import DEFAULT_HISTORY_MONTHS as DEFAULT_HISTORY_MONTHS
from aifinops.model.finance_types import FinanceContext as FinanceContext
from aifinops.model.finance_types import FinanceReport as FinanceReport
from aifinops.model.finance_types import LedgerKey as LedgerKey
from aifinops.model.finance_types import PeriodBooks as PeriodBooks
from aifinops.model.finance_types import TenantResource as TenantResource
from aifinops.model.forecast import DailyFit, exact_partials, fit_history
from aifinops.model.gpu_prices import GpuPricer, normalize_gpu_model
from aifinops.model.inputs import Allocation, AllocationSet, DailyAllocationSets
from aifinops.model.llm_prices import PER_MILLION, LlmPriceCatalog, strip_route
from aifinops.model.recommend import (
    HOURS_PER_MONTH,
    GpuOption,
    GpuWorkload,
    IdleGpuFinding,
    Recommendation,
    RecommendationPolicy,
    SpotPrice,
    build_recommendations,
    gpu_options,
)
from aifinops.model.report import Report
from aifinops.model.roi import (
    AiCost,
    DateRange,
    Initiative,
    InitiativeRoi,
    RoiWindow,
    compute_roi,
    initiative_window,
)
from aifinops.model.routing import (
    LatencyLookup,
    ModelPrice,
    PriceLookup,
    RoutingResult,
    Workload,
    optimize_workload,
)
from aifinops.model.tenancy import TenantResolver
from aifinops.model.vocabulary import IDLE_TENANT, OTHER_TENANT, TOKENS_RESOURCE

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_MONTH = HOURS_PER_MONTH * SECONDS_PER_HOUR
PEAK_WINDOW_SECONDS = 7 * 86400.0
"""Right-sizing looks at the peak utilization of the last seven days (hourly maxima)."""
POD_MODEL_MEMORY_SECONDS = 86400.0
"""How long a pod's GPU model is remembered after DCGM last showed it (spot candidates)."""


# --- configuration, inputs, state ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinanceInputs:
    """What the finance step reads besides the report: OpenCost's daily sets (``None`` when
    that source has no good data), the rate query's rows (pod labels for spot), the LLM price
    list, and measured p95 latencies in seconds per (model, provider)."""

    monthly: DailyAllocationSets | None = None
    allocations: AllocationSet | None = None
    catalog: LlmPriceCatalog | None = None
    latencies: Mapping[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FinanceState:
    """What survives between refreshes.

    ``periods``: the per-period ledger (see the module docstring). ``exporter_daily``: token
    dollars and charge-back moves per (tenant, resource, local date), allocation basis.
    ``token_volume``: tokens per (tenant, model) counted this month since ``volume_since``.
    ``util_peaks``: hourly maxima of used/held GPU per (tenant, GPU model), with ``util_since``
    the first time each was seen.
    """

    last_now: float | None = None
    prev_accrued: Mapping[LedgerKey, float] = field(default_factory=dict)
    periods: Mapping[str, Mapping[LedgerKey, float]] = field(default_factory=dict)
    exporter_daily: Mapping[tuple[str, str, date], float] = field(default_factory=dict)
    prev_tokens: Mapping[tuple[str, str, str, str], float] = field(default_factory=dict)
    token_volume: Mapping[TenantResource, float] = field(default_factory=dict)
    volume_period: str | None = None
    volume_since: float | None = None
    util_peaks: Mapping[TenantResource, Mapping[int, float]] = field(default_factory=dict)
    util_since: Mapping[TenantResource, float] = field(default_factory=dict)
    pod_gpu_models: Mapping[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    infra: InfraMonth | None = None  # a cache, never persisted (see InfraMonth)
    ledger_since: Mapping[str, float] = field(default_factory=dict)  # not persisted yet
    # likewise: (the sets folded, the month in progress then, the books from them)
    books: tuple[InfraMonth, str, Mapping[str, PeriodBooks]] | None = None
    closed: ClosedDays | None = None  # a cache, never persisted (see ClosedDays)
    # Caches of the daily ledger, never persisted: the oldest day kept when it was last
    # pruned (nothing older is in it while that holds), and its entries of today and later
    # (what month to date reads each refresh) with that today.
    daily_kept_from: date | None = None
    exporter_open: tuple[date, Mapping[tuple[str, str, date], float]] | None = None
    util_extremes: Mapping[TenantResource, PeakExtremes] | None = None  # see GpuUsage
    # Never persisted: the books' API tokens per tenant with what they were summed from
    # (the token volume, by identity, and the measured models).
    api_tokens: ApiTokens | None = None


# OpenCost's usage fields per resource and the FOCUS unit they are given in (Allocation's
# byte-hours are turned into GiB-hours).
GIB = float(1 << 30)
QUANTITY_UNITS: Mapping[str, str] = {
    "gpu": "GPU-Hours",
    "cpu": "Core-Hours",  # FOCUS Unit Format: "Core" is its recommended count unit
    "ram": "GiB-Hours",
    "storage": "GiB-Hours",
    TOKENS_RESOURCE: "Tokens",
}


# The resources of cost.py's _resource_costs and of _row_quantities, in their order, and
# their values as tuples (the month's fold reads ~90k rows; a dict per row was a third of it).
COST_RESOURCES = ("gpu", "cpu", "ram", "storage", "network", "shared")
QUANTITY_RESOURCES = ("gpu", "cpu", "ram", "storage")


def _row_costs(row: Allocation) -> tuple[float, float, float, float, float, float]:
    return (
        row.gpu_cost,
        row.cpu_cost,
        row.ram_cost,
        row.pv_cost,
        row.network_cost + row.load_balancer_cost,
        row.shared_cost + row.external_cost,
    )


def _row_quantity_values(row: Allocation) -> tuple[float, float, float, float]:
    return (
        row.gpu_hours,
        row.cpu_core_hours,
        row.ram_byte_hours / GIB,
        row.pv_byte_hours / GIB,
    )


def _row_quantities(row: Allocation) -> dict[str, float]:
    return {
        "gpu": row.gpu_hours,
        "cpu": row.cpu_core_hours,
        "ram": row.ram_byte_hours / GIB,
        "storage": row.pv_byte_hours / GIB,
    }


def exporter_daily_keep_from(today: date, lookback_days: int, books_months: int) -> date:
    """The oldest day of the exporter's daily ledger kept: the forecast's look-back and a
    month, or the first day of the month ``books_months`` before today's, the earlier."""
    first = today.replace(day=1)
    for _ in range(books_months):
        first = (first - timedelta(days=1)).replace(day=1)
    return min(today - timedelta(days=lookback_days + 31), first)


# --- time helpers --------------------------------------------------------------------------


def local_date(ts: float, tz: str) -> date:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).date()


@functools.lru_cache(maxsize=4096)
def local_midnight(d: date, tz: str) -> float:
    """Unix seconds of local midnight starting ``d`` in ``tz``. Cached: a refresh asks for
    the same few dozen days once per (tenant, resource) series — 350k calls at 2,000
    tenants."""
    return datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(tz)).timestamp()


def _split(start: float, end: float, tz: str, by: str) -> list[tuple[str | date, float]]:
    """Fractions of ``[start, end]`` per calendar ``by`` (``"month"`` → ``YYYY-MM``,
    ``"day"`` → a date) in ``tz``; one piece when nothing is crossed."""
    zone = ZoneInfo(tz)

    def key(ts: float) -> str | date:
        d = datetime.fromtimestamp(ts, zone).date()
        return d.strftime("%Y-%m") if by == "month" else d

    if end <= start:
        return [(key(end), 1.0)]
    pieces: list[tuple[str | date, float]] = []
    t = start
    while t < end:
        d = datetime.fromtimestamp(t, zone).date()
        if by == "month":
            nxt = date(d.year + 1, 1, 1) if d.month == 12 else date(d.year, d.month + 1, 1)
        else:
            nxt = d + timedelta(days=1)
        boundary = min(end, local_midnight(nxt, tz))
        if boundary <= t:  # pragma: no cover - defensive against a zone quirk
            boundary = end
        pieces.append((key(t), (boundary - t) / (end - start)))
        t = boundary
    return pieces


# --- the step ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshCalendar:
    """Where ``now`` falls in the calendar of ``tz``, and the interval since the last
    refresh (``hours``; ``interval_start`` is ``now`` at the first refresh)."""

    now: float
    tz: str
    bounds: MonthBounds
    period: str
    today: date
    month_first: date
    hours: float
    interval_start: float


def refresh_calendar(state: FinanceState, now: float, tz: str) -> RefreshCalendar:
    bounds = month_bounds(now, tz)
    hours = 0.0
    if state.last_now is not None and now > state.last_now:
        hours = (now - state.last_now) / SECONDS_PER_HOUR
    return RefreshCalendar(
        now=now,
        tz=tz,
        bounds=bounds,
        period=current_period(now, tz),
        today=local_date(now, tz),
        month_first=local_date(bounds.start, tz),
        hours=hours,
        interval_start=state.last_now if state.last_now is not None else now,
    )


def build_finance(
    report: Report,
    inputs: FinanceInputs,
    ctx: FinanceContext,
    resolver: TenantResolver,
    pricer: GpuPricer,
    state: FinanceState,
    now: float,
) -> tuple[FinanceReport, FinanceState]:
    """One refresh of the finance figures from ``report`` (built at ``now``), phase by
    phase: the exporter's own ledger, month-to-date spend (closed days folded once, today's
    partial day every refresh), budgets, ROI, token volume and routing, utilization peaks
    and recommendations, the period books."""
    cal = refresh_calendar(state, now, ctx.tz)
    own = book_exporter_ledger(report, state, ctx, cal)
    # Asked by the month's fold and the spot candidates: made once per refresh.
    kept = published_tenants(report) if report.cost.folded_tenants > 0 else None
    month = month_spend(report, inputs.monthly, resolver, state, ctx, cal, own, kept)
    budgets, notes, cluster = evaluate_month_budgets(ctx, month, cal)
    initiatives = tuple(_initiative_roi(i, cal, month) for i in ctx.initiatives)
    volume = count_token_volume(report, state, cal)
    prices = _price_lookup(report, inputs.catalog)
    latencies = _latency_lookup(inputs.latencies)
    monthly_tokens = {
        w.name: _monthly_tokens(w, volume.volume, volume.observed) for w in ctx.workloads
    }
    routing = tuple(
        optimize_workload(w, prices, latencies, monthly_tokens[w.name]) for w in ctx.workloads
    )
    usage = track_gpu_usage(report, state, now)
    recommendations = _recommendations(
        report,
        inputs,
        ctx,
        pricer,
        usage.peaks,
        usage.since,
        routing,
        volume.observed,
        budgets,
        now,
        usage.pod_models,
        usage.extremes,
        kept,
    )
    api_tokens = _api_tokens_cached(report, volume.volume, state.api_tokens)
    books = month_books(state, cal, month, api_tokens[2])
    finance = FinanceReport(
        now=now,
        tz=cal.tz,
        period=cal.period,
        month_start=cal.bounds.start,
        infra_available=month.infra_available,
        month_to_date=month.month_to_date,
        tenant_month_to_date=month.tenant_month_to_date,
        budgets=budgets,
        budget_notes=notes,
        cluster=cluster,
        initiatives=initiatives,
        routing=routing,
        routing_window_seconds=volume.observed,
        recommendations=recommendations,
        periods=own.periods,
        idle_cost_usd_per_hour=math.fsum(s.idle_rate for s in report.gpu_stats.values()),
        prices=prices,
        latencies=latencies,
        monthly_tokens=monthly_tokens,
        books=books,
        ledger_since=own.ledger_since,
    )
    new_state = FinanceState(
        last_now=now,
        prev_accrued=dict(report.accrued),
        periods=own.periods,
        exporter_daily=own.daily,
        prev_tokens=volume.prev_tokens,
        token_volume=volume.volume,
        volume_period=cal.period if report.tokens is not None else state.volume_period,
        volume_since=volume.since,
        util_peaks=usage.peaks,
        util_since=usage.since,
        pod_gpu_models=usage.pod_models,
        infra=month.infra,
        books=(month.infra, cal.period, books) if month.infra is not None else None,
        ledger_since=own.ledger_since,
        closed=month.closed,
        daily_kept_from=own.kept_from,
        exporter_open=(cal.today, own.open_daily),
        util_extremes=usage.extremes,
        api_tokens=api_tokens,
    )
    if month.infra is not None:
        month.infra.release_days()  # read by the folds above; not kept with the state
    return finance, new_state


# --- phase: the exporter's own ledger ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExporterLedger:
    """The exporter's counters booked per period (``periods``, with ``ledger_since``) and per
    day for tokens and charge-back (``daily``); ``closed_touched``: this refresh booked
    dollars on a day before today (its interval crossed midnight), so the closed days'
    fold is stale."""

    periods: dict[str, Mapping[LedgerKey, float]]
    ledger_since: dict[str, float]
    daily: dict[tuple[str, str, date], float]
    closed_touched: bool
    kept_from: date  # the oldest day ``daily`` keeps
    open_daily: dict[tuple[str, str, date], float]  # ``daily``'s entries of today and later


def book_exporter_ledger(
    report: Report, state: FinanceState, ctx: FinanceContext, cal: RefreshCalendar
) -> ExporterLedger:
    tz, now, interval_start = cal.tz, cal.now, cal.interval_start
    increments = _increments(report.accrued, state.prev_accrued)
    # Copied on write: only the periods this interval touches (the current one, or two
    # across a month boundary); the past months' ledgers are shared with the previous state.
    periods: dict[str, Mapping[LedgerKey, float]] = dict(state.periods)
    copied: dict[str, dict[LedgerKey, float]] = {}

    def ledger_of(name: str) -> dict[LedgerKey, float]:
        found = copied.get(name)
        if found is None:
            found = copied[name] = dict(periods.get(name, {}))
            periods[name] = found
        return found

    month_pieces = _split(interval_start, now, tz, "month")
    for ledger_key, usd in increments.items():
        for piece, fraction in month_pieces:
            period_ledger = ledger_of(str(piece))
            period_ledger[ledger_key] = period_ledger.get(ledger_key, 0.0) + usd * fraction
    periods.setdefault(cal.period, {})
    # When this process's ledger began each period it holds (a restored state file's periods
    # have no known start: None, read as the period start).
    ledger_since = {p: t for p, t in state.ledger_since.items() if p in periods}
    for name in periods:
        if name not in state.periods and name not in ledger_since:
            ledger_since[name] = max(interval_start, parse_period(name, tz)[0])
    for old in sorted(periods)[: max(0, len(periods) - ctx.history_months)]:
        del periods[old]

    keep_from = exporter_daily_keep_from(cal.today, ctx.lookback_days, ctx.books_months)
    # Pruned once per keep_from (a day's turn, a restored state), else copied in C: up to
    # ~60 days × 2,000 tenants × 4 resources; the days booked since are today or yesterday.
    if state.daily_kept_from == keep_from:
        daily = dict(state.exporter_daily)
    else:
        daily = {k: v for k, v in state.exporter_daily.items() if k[2] >= keep_from}
    today = cal.today
    if state.exporter_open is not None and state.exporter_open[0] == today:
        open_daily = dict(state.exporter_open[1])
    else:
        open_daily = {k: v for k, v in daily.items() if k[2] >= today}
    day_pieces = _split(interval_start, now, tz, "day")

    def book_daily(tenant: str, resource: str, usd: float) -> None:
        for piece, fraction in day_pieces:
            assert isinstance(piece, date)
            k = (tenant, resource, piece)
            daily[k] = value = daily.get(k, 0.0) + usd * fraction
            if piece >= today:
                open_daily[k] = value

    for (tenant, resource, basis), usd in increments.items():
        if resource == TOKENS_RESOURCE and basis == "allocation" and usd:
            book_daily(tenant, resource, usd)
    if cal.hours > 0:
        for (tenant, resource), rate in report.charge_back.get("allocation", {}).items():
            book_daily(tenant, resource, rate * cal.hours)
    touched = any(isinstance(p, date) and p < cal.today for p, _ in day_pieces)
    return ExporterLedger(periods, ledger_since, daily, touched, keep_from, open_daily)


# --- phase: month-to-date spend ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClosedDays:
    """The days before ``today`` folded once: USD per (tenant, resource) and local date
    from OpenCost's daily sets (``infra``) and the exporter's daily ledger, their daily
    series per budget scope, and the forecast fits made from them.

    Why: a closed day's dollars change only when the month query brings new sets (every
    ``budgets.refresh_interval_seconds``) or the day turns, while the refresh runs every
    30 s; at 2,000 tenants folding every day and fitting 2,001 forecasts each refresh was
    most of the finance step. A refresh adds today's partial day to these (see
    :func:`month_spend`); the figures are the same as folding everything again (each
    (key, day) value is the same ``fsum`` of the same parts). Never persisted."""

    infra: InfraMonth | None
    today: date
    tz: str
    lookback_days: int
    budgets: tuple[Budget, ...]
    by_day: Mapping[TenantResource, Mapping[date, float]]
    # OpenCost's dollars of today (and any later day), added to by each refresh.
    open_infra: Mapping[TenantResource, Mapping[date, float]]
    # The closed days of this month per key, as exact partials (:func:`exact_partials`):
    # month to date is their fsum with today's.
    month_values: Mapping[TenantResource, tuple[float, ...]]
    keys_by_tenant: Mapping[str, tuple[TenantResource, ...]]
    # The forecast fit of each budget's scope (and the cluster's), made once per cache.
    fits: Mapping[tuple[str, BudgetScope], DailyFit]
    # Made on first use (:func:`_closed_columns`, :func:`_open_today`), kept while this
    # fold is.
    _columns: list[ClosedColumns] = field(default_factory=list)
    _open: list[OpenColumns] = field(default_factory=list)

    def fit(self, key: tuple[str, BudgetScope]) -> DailyFit:
        found = self.fits.get(key)
        return found if found is not None else DailyFit(self.today, 0)


def fold_closed_days(
    cached: ClosedDays | None,
    infra: InfraMonth | None,
    daily: Mapping[tuple[str, str, date], float],
    cal: RefreshCalendar,
    lookback_days: int,
    touched: bool,
    budgets: Sequence[Budget] = (),
) -> ClosedDays:
    """``cached`` when it was folded from the same sets (``infra`` by identity) on the same
    local day, and this refresh booked nothing on a closed day (``touched``); else the
    closed days folded again."""
    today, tz = cal.today, cal.tz
    if (
        cached is not None
        and not touched
        and cached.infra is infra
        and cached.today == today
        and cached.tz == tz
        and cached.lookback_days == lookback_days
        and cached.budgets == tuple(budgets)
    ):
        return cached
    # The closed days' folds turned into columns per key: days whose folds have equal key
    # tuples (most of them) are transposed at once (``zip``), so a key that only OpenCost
    # booked keeps that run's dates tuple and values as they are, without a dict per key.
    # A (key, closed day) has at most two parts, OpenCost's and the exporter's (one daily
    # entry): such keys are merged in a dict, each day's fsum taken as it comes.
    segments: dict[TenantResource, list[tuple[tuple[date, ...], tuple[float, ...]]]] = {}
    # Equal dates tuples shared (the forecast fits sum the keys of one run column-wise).
    runs: dict[tuple[date, ...], tuple[date, ...]] = {}
    open_infra: dict[TenantResource, dict[date, float]] = defaultdict(dict)
    fsum = math.fsum
    if infra is not None:
        closed_folds: list[tuple[date, Mapping[TenantResource, float]]] = []
        for day, fold in infra.days.items():
            if day < today:
                closed_folds.append((day, fold.dollars))
            else:
                for key, usd in fold.dollars.items():
                    open_infra[key][day] = usd
        for dates, keys, rows in _transposed(closed_folds):
            dates = runs.setdefault(dates, dates)
            for key, values in zip(keys, rows, strict=True):
                found = segments.get(key)
                if found is None:
                    segments[key] = [(dates, values)]
                else:
                    found.append((dates, values))
    own_closed: dict[TenantResource, dict[date, float]] = {}
    for (tenant, resource, day), usd in daily.items():
        if day < today:
            own_closed.setdefault((tenant, resource), {})[day] = usd
    by_day: dict[TenantResource, DayColumns[date]] = {}
    month_values: dict[TenantResource, tuple[float, ...]] = {}
    in_month: dict[int, slice | list[int]] = {}
    month_first = cal.month_first
    for key in (*segments, *[k for k in own_closed if k not in segments]):
        segs = segments.get(key, ())
        own_days = own_closed.get(key)
        if own_days is None and len(segs) == 1:
            dates, values = segs[0]
            sel = in_month.get(id(dates))
            if sel is None:
                sel = in_month[id(dates)] = _positions(dates, lambda d: d >= month_first)
            by_day[key] = DayColumns(dates, array("d", values))
            month_values[key] = exact_partials(
                values[sel] if isinstance(sel, slice) else [values[i] for i in sel]
            )
            continue
        days: dict[date, float] = {}
        for seg_dates, seg_values in segs:
            days.update(zip(seg_dates, seg_values, strict=True))
        for day, usd in (own_days or {}).items():
            # OpenCost's part (its fsum is the value itself) first, as a list would have it.
            seen = days.get(day)
            days[day] = fsum((usd,)) if seen is None else fsum((seen, usd))
        dates = tuple(days)
        by_day[key] = DayColumns(runs.setdefault(dates, dates), array("d", days.values()))
        month_values[key] = exact_partials(v for d, v in days.items() if d >= month_first)
    tenants: dict[str, list[TenantResource]] = defaultdict(list)
    for key in by_day:
        tenants[key[0]].append(key)
    keys_by_tenant = {t: tuple(v) for t, v in tenants.items()}

    def reusable(old: ClosedDays | None) -> ClosedDays | None:
        """``old`` when its fits were made on the same day and terms (so that a scope's fit
        depends only on its columns)."""
        if (
            old is None
            or old.today != today
            or old.tz != tz
            or old.lookback_days != lookback_days
            or (old.infra is None) != (infra is None)
        ):
            return None
        return old

    return ClosedDays(
        infra=infra,
        today=today,
        tz=tz,
        lookback_days=lookback_days,
        budgets=tuple(budgets),
        by_day=by_day,
        open_infra=dict(open_infra),
        month_values=month_values,
        keys_by_tenant=keys_by_tenant,
        fits=_scope_fits(
            by_day,
            keys_by_tenant,
            infra is not None,
            budgets,
            cal,
            lookback_days,
            reusable(cached),
        ),
    )


def _scope_fits(
    by_day: Mapping[TenantResource, DayColumns[date]],
    keys_by_tenant: Mapping[str, Sequence[TenantResource]],
    infra_available: bool,
    budgets: Sequence[Budget],
    cal: RefreshCalendar,
    lookback_days: int,
    previous: ClosedDays | None = None,
) -> dict[tuple[str, BudgetScope], DailyFit]:
    """The forecast fit of each budget's scope and the cluster's: what
    ``fit_daily(scope_series(...)[key])`` gives, from the closed days' columns of the keys
    in that scope only (a tenant's own, or every key for :data:`GLOBAL_TENANT`), each
    day's values summed with one ``fsum`` over the columns that share its dates.
    ``previous``: a fold of the same day whose fit of a scope is kept when that scope's
    keys and their columns are equal (a fold again for another tenant folded into
    __other__, say, changes few tenants' columns; a fit is a Theil-Sen per scope)."""
    tz, zone = cal.tz, ZoneInfo(cal.tz)
    counted = [k for k in by_day if infra_available or k[1] == TOKENS_RESOURCE]
    # The local date each day's midnight reads back as (``daily_by_date``): that day.
    read_back: dict[date, date] = {}
    fits: dict[tuple[str, BudgetScope], DailyFit] = {}
    for tenant, scope in _fit_keys(budgets):
        if tenant == GLOBAL_TENANT:
            members = counted
        else:
            members = [
                k
                for k in keys_by_tenant.get(tenant, ())
                if infra_available or k[1] == TOKENS_RESOURCE
            ]
        chosen = [k for k in members if scope in scopes_of(k[1])]
        if previous is not None and tenant != GLOBAL_TENANT:
            seen = previous.fits.get((tenant, scope))
            same = _same_columns(tenant, keys_by_tenant.get(tenant, ()), chosen, by_day, previous)
            if seen is not None and same:
                fits[(tenant, scope)] = seen
                continue
        per_day = _day_sums([by_day[k] for k in chosen])
        by_date: dict[date, list[float]] = {}
        for day, usd in per_day.items():
            if not math.isfinite(usd):
                continue  # dropped as daily_by_date drops it
            back = read_back.get(day)
            if back is None:
                back = read_back[day] = datetime.fromtimestamp(local_midnight(day, tz), zone).date()
            by_date.setdefault(back, []).append(usd)
        history = {d: math.fsum(v) for d, v in by_date.items()}
        fits[(tenant, scope)] = fit_history(history, cal.today, lookback_days)
    return fits


def _same_columns(
    tenant: str,
    new_all: Sequence[TenantResource],
    keys: Sequence[TenantResource],
    by_day: Mapping[TenantResource, DayColumns[date]],
    previous: ClosedDays,
) -> bool:
    """``previous`` had the same keys for ``tenant`` (``new_all``, so the same in any
    scope) and the same columns (dates and values) for ``keys``, the scope's."""
    old_all = previous.keys_by_tenant.get(tenant, ())
    if old_all != new_all:  # the tenant's keys (so its keys in ``scope``) are not the same
        return False
    for key in keys:
        old, new = previous.by_day[key], by_day[key]
        if not isinstance(old, DayColumns) or old.keys_tuple != new.keys_tuple:
            return False
        if old.values_array != new.values_array:
            return False
    return True


def _day_sums(columns: Sequence[DayColumns[date]]) -> dict[date, float]:
    """The ``fsum`` per date of the values of ``columns``; columns with one dates tuple (by
    identity: :func:`fold_closed_days` shares equal runs) are summed column-wise, without a
    list per date."""
    runs: dict[int, tuple[tuple[date, ...], list[array[float]]]] = {}
    for col in columns:
        found = runs.get(id(col.keys_tuple))
        if found is None:
            runs[id(col.keys_tuple)] = (col.keys_tuple, [col.values_array])
        else:
            found[1].append(col.values_array)
    if len(runs) == 1:
        ((dates, arrays),) = runs.values()
        return dict(zip(dates, map(math.fsum, zip(*arrays, strict=True)), strict=True))
    parts: dict[date, list[float]] = {}
    for dates, arrays in runs.values():
        for day, values in zip(dates, zip(*arrays, strict=True), strict=True):
            parts.setdefault(day, []).extend(values)
    return {d: math.fsum(v) for d, v in parts.items()}


def _transposed(
    folds: Sequence[tuple[date, Mapping[TenantResource, float]]],
) -> Iterator[tuple[tuple[date, ...], tuple[TenantResource, ...], Iterator[tuple[float, ...]]]]:
    """Day folds grouped by equal key tuples (in the order of each group's first day):
    each group's dates, keys, and per key its values on those dates."""
    groups: list[tuple[tuple[TenantResource, ...], list[date], list[Sequence[float]]]] = []
    for day, fold in folds:
        keys: tuple[TenantResource, ...]
        values: Sequence[float]
        if isinstance(fold, DayColumns):
            keys, values = fold.keys_tuple, fold.values_array
        else:
            keys, values = tuple(fold), tuple(fold.values())
        for group in groups:
            if group[0] is keys or group[0] == keys:
                group[1].append(day)
                group[2].append(values)
                break
        else:
            groups.append((keys, [day], [values]))
    for keys, days, arrays in groups:
        yield tuple(days), keys, zip(*arrays, strict=True)


def _positions(dates: tuple[date, ...], wanted: Callable[[date], bool]) -> slice | list[int]:
    """Where ``wanted`` dates are in ``dates``: a slice when they are contiguous."""
    at = [i for i, d in enumerate(dates) if wanted(d)]
    if not at:
        return slice(0, 0)
    return slice(at[0], at[-1] + 1) if at[-1] - at[0] + 1 == len(at) else at


def _fit_keys(budgets: Sequence[Budget]) -> set[tuple[str, BudgetScope]]:
    """The scopes whose forecast is asked: each budget's, and the cluster's."""
    cluster: tuple[str, BudgetScope] = (GLOBAL_TENANT, "all")
    return {(b.tenant, b.scope) for b in budgets} | {cluster}


@dataclass(frozen=True, slots=True)
class MonthSpend:
    """Month-to-date spend at this refresh: the closed days (:class:`ClosedDays`) and
    today's partial day (``opened``: OpenCost's part of today, the current rate over the
    time since the month query ran, the exporter's tokens and charge-back of today) per
    key, as one float (today's USD, the usual key) or USD per date (today and any later
    day)."""

    infra: InfraMonth | None
    infra_available: bool
    closed: ClosedDays
    opened: Mapping[TenantResource, float | Mapping[date, float]]
    month_to_date: Mapping[TenantResource, float]
    tenant_month_to_date: Mapping[str, float]
    # Each tenant's open keys, made when ROI first asks (one walk over the open keys).
    _open_by_tenant: dict[str, list[TenantResource]] = field(default_factory=dict)

    @property
    def infra_start(self) -> date | None:
        return self.infra.start if self.infra is not None else None

    def open_days(self, key: TenantResource) -> Mapping[date, float]:
        """Today's USD per date of ``key`` (empty when it has none)."""
        found = self.opened.get(key)
        if found is None:
            return {}
        if isinstance(found, float):
            return {self.closed.today: found}
        return found

    def tenant_days(
        self, tenant: str
    ) -> Iterable[tuple[TenantResource, Iterable[tuple[date, float]]]]:
        """Each (tenant, resource) key of ``tenant`` with its USD per day, closed and open."""
        by_tenant = self._open_by_tenant
        if not by_tenant and self.opened:
            for key in self.opened:
                by_tenant.setdefault(key[0], []).append(key)
        keys = dict.fromkeys(self.closed.keys_by_tenant.get(tenant, ()))
        keys.update(dict.fromkeys(by_tenant.get(tenant, ())))
        for key in keys:
            closed = self.closed.by_day.get(key, {})
            opened = self.open_days(key)
            yield key, [*closed.items(), *opened.items()]


@dataclass(frozen=True, slots=True)
class ClosedColumns:
    """A closed days' fold as columns: its keys in order; per key, its month's closed days
    as one float where their exact partials are one (``single``, NaN elsewhere: most keys);
    each tenant with a getter of its keys' positions (a tuple from a list)."""

    keys: tuple[TenantResource, ...]
    single: np.ndarray
    is_single: np.ndarray
    tenants: tuple[tuple[str, Callable[[Sequence[float]], tuple[float, ...]]], ...]


def _closed_columns(closed: ClosedDays) -> ClosedColumns:
    if closed._columns:
        return closed._columns[0]
    keys = tuple(closed.by_day)
    partials = [closed.month_values.get(k, ()) for k in keys]
    is_single = np.fromiter((len(p) == 1 for p in partials), bool, len(keys))
    single = np.fromiter((p[0] if len(p) == 1 else math.nan for p in partials), float, len(keys))
    at: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        at.setdefault(key[0], []).append(i)
    tenants = tuple((t, _picker(idx)) for t, idx in at.items())
    columns = ClosedColumns(keys, single, is_single, tenants)
    closed._columns.append(columns)
    return columns


def _picker(idx: list[int]) -> Callable[[Sequence[float]], tuple[float, ...]]:
    """The values at ``idx`` as a tuple (``itemgetter`` gives a bare value for one index)."""
    if len(idx) == 1:
        (only,) = idx
        return lambda values: (values[only],)
    getter = itemgetter(*idx)
    return lambda values: getter(values)


def _closed_month_to_date(
    columns: ClosedColumns,
    opened: Mapping[TenantResource, float | Mapping[date, float]],
    one: Callable[[TenantResource], float],
) -> list[float]:
    """Each closed key's month to date, ``one(key)`` (an ``fsum``), column-wise where it is
    an ``fsum`` of two finite floats (the closed days' single partial and today's float, or
    the partial alone): their IEEE sum (correctly rounded, as ``fsum`` is), ``+ 0.0`` as
    ``fsum`` never gives -0.0. Every other key, or a total that is not finite, by ``one``."""
    keys, n = columns.keys, len(columns.keys)
    found = list(map(opened.get, keys))
    has_today = np.fromiter(map(isinstance, found, repeat(float)), bool, n)
    absent = np.fromiter(map(is_, found, repeat(None)), bool, n)
    today = np.zeros(n)
    if has_today.any():
        today[has_today] = np.array(found, dtype=object)[has_today].astype(float)
    with np.errstate(all="ignore"):
        total = columns.single + today + 0.0
        fast = columns.is_single & (has_today | absent) & np.isfinite(total)
        fast &= np.isfinite(columns.single) & np.isfinite(today)
    values: list[float] = total.tolist()
    for i in np.flatnonzero(~fast).tolist():
        values[i] = one(keys[i])
    return values


def _rate_part(
    rates: Mapping[TenantResource, float], moved: Mapping[TenantResource, float], hours: float
) -> dict[TenantResource, float]:
    """USD per key at its own rate (less what charge-back moved) over ``hours``, the keys
    with a nonzero own rate but tokens': ``rate × hours`` column-wise (the same IEEE
    operations a loop makes; NaN is nonzero as it is truthy)."""
    keys = tuple(rates)
    n = len(keys)
    own = np.fromiter(rates.values(), float, n)
    if moved:
        own = own - np.fromiter(map(moved.get, keys, repeat(0.0)), float, n)
    not_tokens = np.fromiter(map(ne, map(itemgetter(1), keys), repeat(TOKENS_RESOURCE)), bool, n)
    keep = (own != 0) & not_tokens
    return dict(zip(compress(keys, keep.tolist()), (own[keep] * hours).tolist(), strict=True))


@dataclass(frozen=True, slots=True)
class OpenColumns:
    """A closed days' fold's open keys (OpenCost's today and later) as columns: the keys in
    order, whether a key's only open day is today (``usual``) and its USD then."""

    keys: tuple[TenantResource, ...]
    usual: np.ndarray
    today_usd: np.ndarray


def _open_today(
    closed: ClosedDays,
    rate_part: Mapping[TenantResource, float],
    own_part: Mapping[TenantResource, object],
) -> tuple[dict[TenantResource, float | Mapping[date, float]], list[TenantResource]]:
    """Today's USD of each usual open key (OpenCost's today alone, and no exporter's own
    part): OpenCost's part, or ``fsum`` of it and the rate's, as their IEEE sum ``+ 0.0``
    when finite (what ``fsum`` of two finite floats is). Every open key is in the dict, in
    order; the others' values are placeholders, listed to be made one by one."""
    if not closed._open:
        keys = tuple(closed.open_infra)
        today = closed.today
        days_of = closed.open_infra.values()
        usual = [len(days) == 1 and today in days for days in days_of]
        usd = [days[today] if u else 0.0 for days, u in zip(days_of, usual, strict=True)]
        closed._open.append(
            OpenColumns(keys, np.array(usual, dtype=bool), np.array(usd, dtype=float))
        )
    columns = closed._open[0]
    keys, n = columns.keys, len(columns.keys)
    has_rate = np.fromiter(map(rate_part.__contains__, keys), bool, n)
    rate = np.fromiter(map(rate_part.get, keys, repeat(0.0)), float, n)
    fast = columns.usual.copy()
    if own_part:
        fast &= ~np.fromiter(map(own_part.__contains__, keys), bool, n)
    with np.errstate(all="ignore"):
        total = columns.today_usd + rate + 0.0
        finite = np.isfinite(columns.today_usd) & np.isfinite(rate) & np.isfinite(total)
    fast &= finite | ~has_rate
    values = np.where(has_rate, total, columns.today_usd).tolist()
    opened: dict[TenantResource, float | Mapping[date, float]] = dict(
        zip(keys, values, strict=True)
    )
    others = [keys[i] for i in np.flatnonzero(~fast).tolist()]
    return opened, others


def published_tenants(report: Report) -> frozenset[str]:
    """The tenants with a cost rate in ``report`` (what it publishes when it folds the rest
    into ``__other__``)."""
    return frozenset(map(itemgetter(0), chain.from_iterable(report.cost.rates.values())))


def month_spend(
    report: Report,
    monthly: DailyAllocationSets | None,
    resolver: TenantResolver,
    state: FinanceState,
    ctx: FinanceContext,
    cal: RefreshCalendar,
    own: ExporterLedger,
    kept: frozenset[str] | None = None,
) -> MonthSpend:
    """Month-to-date USD per (tenant, resource), allocation basis (see the module
    docstring): the closed days folded once per day and set of daily sets, today's part
    every refresh. ``kept``: :func:`published_tenants` when the report folds tenants."""
    infra: InfraMonth | None = None
    if monthly is not None:
        infra = infra_month(state.infra, monthly, resolver, kept, cal.tz)
    closed = fold_closed_days(
        state.closed, infra, own.daily, cal, ctx.lookback_days, own.closed_touched, ctx.budgets
    )
    today = cal.today
    fsum = math.fsum
    # Today's parts besides OpenCost's: the rate since the month query ran, and the
    # exporter's own tokens and charge-back of today (and any later day).
    rate_part: dict[TenantResource, float] = {}
    if monthly is not None:
        gap_hours = max(0.0, cal.now - monthly.end) / SECONDS_PER_HOUR
        if gap_hours > 0:
            rate_part = _rate_part(
                report.tenant_rates("allocation"),
                report.charge_back.get("allocation", {}),
                gap_hours,
            )
    own_part: dict[TenantResource, dict[date, list[float]]] = {}
    for (tenant, resource, day), usd in own.open_daily.items():
        own_part.setdefault((tenant, resource), {}).setdefault(day, []).append(usd)

    def merged(
        infra_days: Mapping[date, float], rate: float | None, mine: Mapping[date, list[float]]
    ) -> dict[date, float]:
        parts = {d: [usd] for d, usd in infra_days.items()}
        if rate is not None:
            parts.setdefault(today, []).append(rate)
        for day, values in mine.items():
            parts.setdefault(day, []).extend(values)
        return {d: fsum(v) for d, v in parts.items()}

    # Keys in the order OpenCost's open days, the rates, the exporter's own days bring them.
    # The usual key has OpenCost's today and a rate: one fsum of two, kept as a float (no
    # dict per key); one with OpenCost's days alone shares them.
    # The usual one column-wise (_open_today); the others, and a sum that is not finite,
    # one by one.
    open_infra = closed.open_infra
    opened, others = _open_today(closed, rate_part, own_part)
    for key in others:
        infra_days = open_infra[key]
        since_query = rate_part.get(key)
        mine = own_part.pop(key, None) if own_part else None
        if mine is None and len(infra_days) == 1 and today in infra_days:
            opened[key] = (
                infra_days if since_query is None else fsum((infra_days[today], since_query))
            )
        else:
            opened[key] = merged(infra_days, since_query, mine or {})
    for key in filterfalse(open_infra.__contains__, rate_part):
        since_query = rate_part[key]
        mine = own_part.pop(key, None) if own_part else None
        if mine is None:
            opened[key] = fsum((since_query,))
        elif len(mine) == 1 and today in mine:
            opened[key] = fsum((since_query, *mine[today]))
        else:
            opened[key] = merged({}, since_query, mine)
    for key, mine in own_part.items():
        # The usual one: the exporter's tokens of today alone (a float, not a dict).
        if len(mine) == 1 and today in mine:
            opened[key] = fsum(mine[today])
        else:
            opened[key] = merged({}, None, mine)

    infra_available = monthly is not None
    month_values = closed.month_values
    closed_keys = closed.by_day

    def key_month_to_date(key: TenantResource) -> float:
        todays = opened.get(key)
        values = month_values.get(key, ())
        if todays is None:
            return fsum(values)
        if isinstance(todays, float):
            return fsum((*values, todays))
        if len(todays) == 1 and today in todays:
            return fsum((*values, todays[today]))
        return fsum((*values, *(v for d, v in todays.items() if d <= today)))

    open_only = [*filterfalse(closed_keys.__contains__, opened)]
    month_to_date: dict[TenantResource, float] = {}
    tenant_mtd: dict[str, float] = {}
    if infra_available:
        columns = _closed_columns(closed)
        totals = _closed_month_to_date(columns, opened, key_month_to_date)
        month_to_date = dict(zip(columns.keys, totals, strict=True))
        extra: dict[str, list[float]] = {}
        for key in open_only:
            month_to_date[key] = usd = key_month_to_date(key)
            extra.setdefault(key[0], []).append(usd)
        # Per tenant, its closed keys' totals picked in C, then its open-only keys'.
        for tenant, pick in columns.tenants:
            picked = pick(totals)
            more = extra.pop(tenant, None)
            tenant_mtd[tenant] = fsum(picked) if more is None else fsum((*picked, *more))
        for tenant, more in extra.items():
            tenant_mtd[tenant] = fsum(more)
    else:  # tokens only, from the exporter's own ledger
        for key in (*closed_keys, *open_only):
            if key[1] == TOKENS_RESOURCE:
                month_to_date[key] = key_month_to_date(key)
    return MonthSpend(
        infra=infra,
        infra_available=infra_available,
        closed=closed,
        opened=opened,
        month_to_date=month_to_date,
        tenant_month_to_date=tenant_mtd,
    )


# --- phase: budgets ------------------------------------------------------------------------


class ScopeSpend:
    """``scope_totals(month.month_to_date)`` asked key by key: a tenant's ``all`` is its
    month to date (the same fsum of the same values), its ``gpu`` or ``tokens`` its one
    key's; only :data:`GLOBAL_TENANT`'s scopes walk every key, once each. Why: the budgets
    ask ~2,000 of the ~6,000 (tenant, scope) totals that summing every key makes."""

    def __init__(self, month: MonthSpend) -> None:
        self._month = month
        self._global: dict[str, float] = {}

    def get(self, key: tuple[str, BudgetScope], default: float = 0.0) -> float:
        tenant, scope = key
        mtd = self._month.month_to_date
        if tenant == GLOBAL_TENANT:
            found = self._global.get(scope)
            if found is None:
                found = self._global[scope] = math.fsum(
                    mtd.values()
                    if scope == "all"  # every resource counts in all
                    else (v for (_, r), v in mtd.items() if scope in scopes_of(r))
                )
            return found
        if scope == "all":
            total = self._month.tenant_month_to_date.get(tenant)
            if total is not None:
                return total
            if self._month.infra_available:
                return default  # tenant_month_to_date has every tenant of month_to_date
            values = [v for (t, _), v in mtd.items() if t == tenant]  # without OpenCost's month
            return math.fsum(values) if values else default
        one = mtd.get((tenant, scope))
        return default if one is None else math.fsum((one,))


def evaluate_month_budgets(
    ctx: FinanceContext, month: MonthSpend, cal: RefreshCalendar
) -> tuple[tuple[BudgetStatus, ...], tuple[str, ...], BudgetStatus | None]:
    """The configured budgets that can be evaluated (without OpenCost's month only the
    ``tokens`` scope: a missing month is no spend to alert on), why the others are not, and
    the whole cluster's status (``None`` without OpenCost's month). Forecasts use the closed
    days' fits and this refresh's spend."""
    spend = ScopeSpend(month)
    notes: list[str] = []
    budgets: list[BudgetStatus] = []
    for b in ctx.budgets:
        if b.scope != "tokens" and not month.infra_available:
            notes.append(
                f"budget {b.tenant}/{b.scope}: no OpenCost month-to-date data "
                "(source opencost_month down, stale or not fetched yet): not evaluated"
            )
            continue
        key = (b.tenant, b.scope)
        budgets.append(
            evaluate_budget_fitted(b, spend.get(key, 0.0), month.closed.fit(key), cal.now, cal.tz)
        )
    cluster: BudgetStatus | None = None
    if month.infra_available:
        global_all = next(
            (b for b in ctx.budgets if b.tenant == GLOBAL_TENANT and b.scope == "all"),
            Budget(GLOBAL_TENANT, 0.0),
        )
        cluster = evaluate_budget_fitted(
            global_all,
            spend.get((GLOBAL_TENANT, "all"), 0.0),
            month.closed.fit((GLOBAL_TENANT, "all")),
            cal.now,
            cal.tz,
        )
    return tuple(budgets), tuple(notes), cluster


# --- phase: token volume -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenVolume:
    """Tokens per (tenant, model) this month since ``since``; ``observed``: seconds."""

    volume: Mapping[TenantResource, float]  # shared with the previous state when unchanged
    since: float | None
    observed: float
    prev_tokens: Mapping[tuple[str, str, str, str], float]


def count_token_volume(report: Report, state: FinanceState, cal: RefreshCalendar) -> TokenVolume:
    now, period = cal.now, cal.period
    volume: Mapping[TenantResource, float] = {}
    volume_since = state.volume_since
    prev_tokens: Mapping[tuple[str, str, str, str], float] = state.prev_tokens
    if report.tokens is not None:
        if state.volume_period == period:
            volume = state.token_volume
        else:
            volume_since = now
        tokens = report.tokens.tokens
        # Only the counters that moved (compared in C; in their order, so the sums add up
        # as before); the volume is copied on the first one that adds, else shared.
        moved = compress(tokens.items(), map(ne, tokens.values(), map(prev_tokens.get, tokens)))
        grown: dict[TenantResource, float] | None = None
        for usage_key, n in moved:
            prev = prev_tokens.get(usage_key)
            delta = n if prev is None or n < prev else n - prev
            if delta > 0:
                if grown is None:
                    grown = dict(volume)
                vk = (usage_key[0], usage_key[1])
                grown[vk] = grown.get(vk, 0.0) + delta
        if grown is not None:
            volume = grown
        prev_tokens = dict(tokens)
        if volume_since is None:
            volume_since = now
    observed = max(0.0, now - volume_since) if volume_since is not None else 0.0
    return TokenVolume(volume, volume_since, observed, prev_tokens)


# --- phase: utilization peaks --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuUsage:
    """Hourly utilization peaks per (tenant, GPU model) with when each was first seen, and
    the GPU model of each pod as DCGM last showed it ``(model, at)``."""

    peaks: dict[TenantResource, dict[int, float]]
    since: dict[TenantResource, float]
    pod_models: dict[tuple[str, str], tuple[str, float]]
    # Each key's (hourly peaks, oldest hour, highest peak), kept while the hourly dict is
    # the same object: a week is 168 hours per key, scanned twice per refresh before.
    extremes: dict[TenantResource, PeakExtremes] = field(default_factory=dict)


PeakExtremes = tuple[Mapping[int, float], int, float]


def track_gpu_usage(report: Report, state: FinanceState, now: float) -> GpuUsage:
    hour = math.floor(now / SECONDS_PER_HOUR)
    oldest_hour = hour - math.ceil(PEAK_WINDOW_SECONDS / SECONDS_PER_HOUR)
    peaks: dict[TenantResource, dict[int, float]] = {}
    since: dict[TenantResource, float] = {}
    known = state.util_extremes or {}
    extremes: dict[TenantResource, PeakExtremes] = {}
    for gpu_key, stats in report.gpu_stats.items():
        if stats.held <= 0:
            continue
        u = min(1.0, max(0.0, stats.used / stats.held))
        previous = state.util_peaks.get(gpu_key)
        if previous and previous.get(hour, -1.0) >= max(0.0, u):
            seen = known.get(gpu_key)
            if seen is None or seen[0] is not previous:
                seen = (previous, min(previous), max(previous.values()))
            unchanged = seen[1] > oldest_hour
        else:
            unchanged = False
        if unchanged:
            # Unchanged (no new peak, nothing expired): shared, not copied; a week of
            # hourly maxima is 168 entries per (tenant, GPU model).
            assert previous is not None and seen is not None
            if isinstance(previous, dict):
                peaks[gpu_key] = previous
                extremes[gpu_key] = seen
            else:
                peaks[gpu_key] = copied = dict(previous)
                extremes[gpu_key] = (copied, seen[1], seen[2])
        else:
            hourly = {h: v for h, v in (previous or {}).items() if h > oldest_hour}
            hourly[hour] = max(hourly.get(hour, 0.0), u)
            peaks[gpu_key] = hourly
            extremes[gpu_key] = (hourly, min(hourly), max(hourly.values()))
        since[gpu_key] = max(state.util_since.get(gpu_key, now), now - PEAK_WINDOW_SECONDS)
    # GPU model per pod as DCGM last saw it: a batch job that finished within the rate
    # query's window still has cost there, but no DCGM series any more.
    # Most pods are seen again every refresh: the oldest sighting (a scan in C) says whether
    # any is forgotten; the sightings are written in C too (~10k pods at 2,000 tenants).
    previous_models = state.pod_gpu_models
    oldest = min(map(itemgetter(1), previous_models.values()), default=now)
    if now - oldest <= POD_MODEL_MEMORY_SECONDS:
        pod_models = dict(previous_models)
    else:
        pod_models = {
            k: v for k, v in previous_models.items() if now - v[1] <= POD_MODEL_MEMORY_SECONDS
        }
    shares = report.cost.shares
    pods = map(itemgetter(2, 3), map(attrgetter("idle_key"), shares))
    models = zip(map(attrgetter("gpu_model"), shares), repeat(now))  # repeat: not strict
    pod_models.update(zip(pods, models, strict=True))
    return GpuUsage(peaks, since, pod_models, extremes)


# --- phase: the books ----------------------------------------------------------------------


def month_books(
    state: FinanceState, cal: RefreshCalendar, month: MonthSpend, api_tokens: Mapping[str, float]
) -> dict[str, PeriodBooks]:
    """:func:`period_books` of the months OpenCost's sets cover (none without them); a past
    month's days are all closed, so the closed days' fold is their ``by_day``."""
    infra = month.infra
    if infra is None:
        return {}
    reuse = None
    if state.books is not None and state.books[0] is infra and state.books[1] == cal.period:
        reuse = state.books[2]
    return period_books(
        infra,
        month.closed.by_day,
        month.month_to_date,
        cal.period,
        cal.now,
        api_tokens,
        reuse,
    )


K = TypeVar("K", bound=Hashable)


class DayColumns(Mapping[K, float], Generic[K]):
    """A read-only mapping kept as two columns: the keys (a tuple that may be shared, see
    :func:`infra_month` and :func:`fold_closed_days`) and their values in an
    ``array('d')``, in insertion order.

    Why: a month of day folds at 2,000 tenants is ~670k (key, day) entries; as dicts of
    float objects they were the largest part of the finance state (bench/README.md,
    profile summary). Iterating the items (what the folds do) reads the columns; a look-up
    by key builds the index on first use."""

    __slots__ = ("_index", "_keys", "_values")

    def __init__(self, keys: tuple[K, ...], values: array[float]) -> None:
        if len(keys) != len(values):
            raise ValueError("DayColumns: as many values as keys")
        self._keys = keys
        self._values = values
        self._index: dict[K, int] | None = None

    @property
    def keys_tuple(self) -> tuple[K, ...]:
        """The keys as given (possibly shared with other columns)."""
        return self._keys

    @property
    def values_array(self) -> array[float]:
        return self._values

    def __getitem__(self, key: K) -> float:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self._keys)}
        return self._values[self._index[key]]

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> ItemsView[K, float]:
        return _ColumnItems(self)

    def values(self) -> ValuesView[float]:
        return _ColumnValues(self)


class _ColumnItems(ItemsView[K, float]):
    _mapping: DayColumns[K]

    def __iter__(self) -> Iterator[tuple[K, float]]:
        return zip(self._mapping._keys, self._mapping._values, strict=True)


class _ColumnValues(ValuesView[float]):
    _mapping: DayColumns[Hashable]

    def __iter__(self) -> Iterator[float]:
        return iter(self._mapping._values)


@dataclass(frozen=True, slots=True)
class DayFold:
    """One local date's daily sets (``sets``, kept for their identity) folded to USD and
    usage per (tenant, resource), as :class:`DayColumns`."""

    sets: tuple[AllocationSet, ...]
    dollars: Mapping[TenantResource, float]
    quantities: Mapping[TenantResource, float]
    # Each row's tenant as a code (:attr:`InfraMonth.names`): where the rows of the tenants
    # folded into __other__ are (a fold per real tenant only).
    owners: array[int] | None = None


@dataclass(frozen=True, slots=True)
class InfraMonth:
    """OpenCost's daily sets folded to USD per (tenant, resource) and local date, with the
    inputs it was folded from. The sets change once per ``budgets.refresh_interval_seconds``
    and the rates every refresh: at 2,000 tenants folding 40k rows is most of the finance
    step, so it is redone only when the sets, the tenancy resolver or the time zone change
    (compared by identity/equality in :func:`infra_month`), and then only for the days whose
    sets changed (``base``: the month query keeps the sets of days that have settled, so a
    new answer brings new sets for its last days only).

    The days are folded per real tenant (``base``); ``days`` reads them with the tenants
    not ``kept`` folded into ``__other__`` (:func:`_fold_into_other`, from their own rows).
    Why: which tenants the report publishes moves with the rates (a tenant at the cut-off
    in, another out), and refolding the month for it was most of such a refresh."""

    sets: DailyAllocationSets
    resolver: TenantResolver
    kept: frozenset[str] | None
    tz: str
    start: date | None
    spans: Mapping[date, tuple[float, float]] = field(default_factory=dict)  # per local date
    base: Mapping[date, DayFold] = field(default_factory=dict)
    # The tenant of each owner code, and the codes (shared by the folds reused from a
    # previous InfraMonth; only ever appended to).
    names: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    # ``days`` made when first read, until :meth:`release_days` (a refresh reads them for
    # the closed days' fold and the books, then holds the per-key columns they make).
    _derived: list[Mapping[date, DayFold]] = field(default_factory=list)

    @property
    def days(self) -> Mapping[date, DayFold]:
        """The day folds with the tenants not ``kept`` folded into ``__other__``."""
        if self.kept is None:
            return self.base
        if not self._derived:
            kept = self.kept
            folded = frozenset(
                c
                for c, t in enumerate(self.names)
                if t not in kept and t not in (IDLE_TENANT, OTHER_TENANT)
            )
            other = frozenset(c for c, t in enumerate(self.names) if t == OTHER_TENANT)
            self._derived.append(
                {d: _fold_into_other(f, folded, other, self.names) for d, f in self.base.items()}
            )
        return self._derived[0]

    def release_days(self) -> None:
        """Forget the derived ``days`` (made again when read)."""
        self._derived.clear()

    # Derived when asked (when the closed days or the books are folded again), not kept:
    # at 2,000 tenants each is ~25 MB of dicts that the day folds already hold.
    @property
    def by_day(self) -> dict[TenantResource, dict[date, float]]:
        """USD per (tenant, resource) and local date."""
        out: dict[TenantResource, dict[date, float]] = {}
        for day, fold in self.days.items():
            for key, usd in fold.dollars.items():
                out.setdefault(key, {})[day] = usd
        return out

    @property
    def quantities(self) -> dict[TenantResource, dict[date, float]]:
        """OpenCost's usage (:data:`QUANTITY_UNITS`) per (tenant, resource) and local date."""
        out: dict[TenantResource, dict[date, float]] = {}
        for day, fold in self.days.items():
            for key, q in fold.quantities.items():
                out.setdefault(key, {})[day] = q
        return out


def infra_month(
    cached: InfraMonth | None,
    monthly: DailyAllocationSets,
    resolver: TenantResolver,
    kept: frozenset[str] | None,
    tz: str,
) -> InfraMonth:
    """``cached`` when it was folded from the same inputs, else the sets folded again (a
    day whose sets are the very ones ``cached`` folded is reused). ``kept``: the tenants the
    report publishes when it folds the rest into ``__other__`` (``None`` when it folds
    none)."""
    same_rules = cached is not None and cached.resolver is resolver and cached.tz == tz
    if cached is not None and same_rules and cached.sets is monthly:
        if cached.kept == kept:
            return cached
        # The same folds read with other tenants folded (none derived for them yet).
        return replace(cached, kept=kept, _derived=[])
    previous = cached.base if cached is not None and same_rules else {}
    names = cached.names if cached is not None and same_rules else []
    codes = cached.codes if cached is not None and same_rules else {}
    groups: dict[date, list[AllocationSet]] = {}
    spans: dict[date, tuple[float, float]] = {}
    start: date | None = None
    for set_start, set_end, allocation_set in monthly.sets:
        day = local_date((set_start + set_end) / 2.0, tz)
        start = day if start is None else min(start, day)
        seen = spans.get(day)
        spans[day] = (
            (set_start, set_end)
            if seen is None
            else (min(seen[0], set_start), max(seen[1], set_end))
        )
        groups.setdefault(day, []).append(allocation_set)
    days: dict[date, DayFold] = {}
    # One key tuple per (tenant, resource) for every day's fold (the reused ones' included):
    # at 2,000 tenants a month holds ~670k (key, day) entries but ~12k distinct keys, and a
    # tuple per entry was ~36 MB of the finance state (bench/README.md, profile summary).
    keys: dict[TenantResource, TenantResource] = {}
    for reused in previous.values():
        for key in reused.dollars:
            keys.setdefault(key, key)
    tenant_keys: dict[str, TenantKeys] = {}
    for day, sets in groups.items():
        fold = previous.get(day)
        if (
            fold is None
            or len(fold.sets) != len(sets)
            or any(a is not b for a, b in zip(fold.sets, sets, strict=True))
        ):
            fold = _fold_day(tuple(sets), resolver, None, keys, tenant_keys, (names, codes))
        days[day] = fold
    return InfraMonth(monthly, resolver, kept, tz, start, spans, days, names, codes)


def _fold_day(
    sets: tuple[AllocationSet, ...],
    resolver: TenantResolver,
    kept: frozenset[str] | None,
    keys: dict[TenantResource, TenantResource] | None = None,
    tenant_keys: dict[str, TenantKeys] | None = None,
    coding: tuple[list[str], dict[str, int]] | None = None,
) -> DayFold:
    """A day's rows booked to their tenants (``__other__`` for a tenant not ``kept``).
    ``keys``: the (tenant, resource) tuples to use, shared with other days' folds (a key
    new here is added to it); ``tenant_keys``: each tenant's, likewise. Each key's value is
    the fsum of its parts, keys in the order the rows first bring them. ``coding``: the
    tenant of each code and the codes (appended to), to keep each row's (``owners``)."""
    keys = {} if keys is None else keys
    tenant_keys = {} if tenant_keys is None else tenant_keys
    rows = [row for allocation_set in sets for row in allocation_set.allocations]
    owners: list[str] = []
    for row in rows:
        tenant = tenant_of(row, resolver)
        if kept is not None and tenant not in kept and tenant not in (IDLE_TENANT, OTHER_TENANT):
            tenant = OTHER_TENANT
        owners.append(tenant)
    rows_of = Counter(owners)
    coded: array[int] | None = None
    if coding is not None:
        names, codes = coding
        for tenant in rows_of.keys() - codes.keys():
            codes[tenant] = len(names)
            names.append(tenant)
        coded = array("H" if len(names) <= 1 << 16 else "I", map(codes.__getitem__, owners))
    dollars, usage = _FoldColumns(), _FoldColumns()
    for row, tenant in zip(rows, owners, strict=True):
        made = tenant_keys.get(tenant)
        if made is None:
            made = tenant_keys[tenant] = (
                tuple(keys.setdefault((tenant, r), (tenant, r)) for r in COST_RESOURCES),
                tuple(keys.setdefault((tenant, r), (tenant, r)) for r in QUANTITY_RESOURCES),
            )
        if rows_of[tenant] == 1:
            dollars.add_alone(made[0], _row_costs(row))
            usage.add_alone(made[1], _row_quantity_values(row))
        else:
            dollars.add_part(made[0], _row_costs(row))
            usage.add_part(made[1], _row_quantity_values(row))
    return DayFold(sets, dollars.columns(), usage.columns(), coded)


def _fold_into_other(
    fold: DayFold, folded_codes: frozenset[int], other_codes: frozenset[int], names: Sequence[str]
) -> DayFold:
    """``fold`` (per real tenant, with ``owners``) as :func:`_fold_day` with ``kept`` gives
    it: the keys of the tenants not kept (and __other__'s own) replaced by __other__'s, each
    at the first of them, its value the ``fsum`` of their rows' parts (exactly what the
    rows booked to __other__ sum to; the one part as it is). ``fold`` itself when no tenant
    of that day is folded. Only the rows of the folded tenants are read."""
    owners = fold.owners
    assert owners is not None
    present = set(owners)
    folded = present & folded_codes
    if not folded:
        return fold
    merged_codes = folded | (present & other_codes)
    at = compress(range(len(owners)), map(merged_codes.__contains__, owners))
    rows = _rows_at(fold.sets, list(at))
    cost_parts: dict[str, list[float]] = {r: [] for r in COST_RESOURCES}
    usage_parts: dict[str, list[float]] = {r: [] for r in QUANTITY_RESOURCES}
    for row in rows:
        for r, v in zip(COST_RESOURCES, _row_costs(row), strict=True):
            if v:
                cost_parts[r].append(v)
        for r, v in zip(QUANTITY_RESOURCES, _row_quantity_values(row), strict=True):
            if v:
                usage_parts[r].append(v)
    tenants = frozenset(names[c] for c in merged_codes)
    return DayFold(
        fold.sets,
        _merged_columns(fold.dollars, tenants, cost_parts),
        _merged_columns(fold.quantities, tenants, usage_parts),
    )


def _rows_at(sets: Sequence[AllocationSet], at: Sequence[int]) -> list[Allocation]:
    """The rows at positions ``at`` (ascending) of the sets' rows in order, a columnar set's
    built for those positions only."""
    out: list[Allocation] = []
    offset, i = 0, 0
    for allocation_set in sets:
        n = (
            len(allocation_set.allocations)
            if allocation_set.columns is None
            else (len(allocation_set.columns[0]))
        )
        mine = []
        while i < len(at) and at[i] < offset + n:
            mine.append(at[i] - offset)
            i += 1
        if mine:
            if allocation_set.columns is not None:
                cols = allocation_set.columns
                out += [Allocation(*(col[j] for col in cols)) for j in mine]
            else:
                rows = allocation_set.allocations
                out += [rows[j] for j in mine]
        offset += n
    return out


def _merged_columns(
    columns: Mapping[TenantResource, float],
    tenants: frozenset[str],
    parts: Mapping[str, list[float]],
) -> DayColumns[TenantResource]:
    """``columns`` with the keys of ``tenants`` replaced by __other__'s (see
    :func:`_fold_into_other`)."""
    assert isinstance(columns, DayColumns)
    keys, values = columns.keys_tuple, columns.values_array
    hits = compress(range(len(keys)), map(tenants.__contains__, map(itemgetter(0), keys)))
    out_keys: list[TenantResource] = []
    out_values = array("d")
    placed: set[str] = set()
    start = 0
    for i in hits:
        out_keys += keys[start:i]
        out_values += values[start:i]
        resource = keys[i][1]
        if resource not in placed:
            placed.add(resource)
            p = parts[resource]
            out_keys.append((OTHER_TENANT, resource))
            out_values.append(p[0] if len(p) == 1 else math.fsum(p))
        start = i + 1
    out_keys += keys[start:]
    out_values += values[start:]
    return DayColumns(tuple(out_keys), out_values)


# A tenant's (tenant, resource) keys for the costs and for the usage, in the order of
# COST_RESOURCES and QUANTITY_RESOURCES: made once per month fold, not per row or day.
TenantKeys = tuple[tuple[TenantResource, ...], tuple[TenantResource, ...]]


class _FoldColumns:
    """One day's fold as it is built: keys and values in the order first seen; the nonzero
    values of a tenant with one row that day go in as they are (C-level ``compress`` and
    ``filter``: the fsum of one nonzero value is the value), a tenant with several rows
    gets a list per key, summed at the end. Why: ~90k rows × 10 fields a month, most
    tenants with one row a day; a dict look-up per field was most of the first fold."""

    __slots__ = ("_at", "_keys", "_parts", "_values")

    def __init__(self) -> None:
        self._keys: list[TenantResource] = []
        self._values: list[float] = []
        self._at: dict[TenantResource, int] = {}
        self._parts: dict[TenantResource, list[float]] = {}

    def add_alone(self, keys: tuple[TenantResource, ...], values: tuple[float, ...]) -> None:
        self._keys.extend(compress(keys, values))
        self._values.extend(filter(None, values))

    def add_part(self, keys: tuple[TenantResource, ...], values: tuple[float, ...]) -> None:
        for key, value in zip(keys, values, strict=True):
            if not value:
                continue
            found = self._parts.get(key)
            if found is None:
                self._at[key] = len(self._keys)
                self._keys.append(key)
                self._values.append(value)
                self._parts[key] = [value]
            else:
                found.append(value)

    def columns(self) -> DayColumns[TenantResource]:
        for key, parts in self._parts.items():
            if len(parts) > 1:
                self._values[self._at[key]] = math.fsum(parts)
        return DayColumns(tuple(self._keys), array("d", self._values))


def period_books(
    infra: InfraMonth,
    by_day: Mapping[TenantResource, Mapping[date, float]],
    month_to_date: Mapping[TenantResource, float],
    period: str,
    now: float,
    tokens: Mapping[str, float],
    cached: Mapping[str, PeriodBooks] | None = None,
) -> dict[str, PeriodBooks]:
    """The books of every calendar month OpenCost's daily sets cover from its first day:
    dollars per (tenant, resource) are ``by_day`` (OpenCost's infrastructure dollars plus the
    exporter's own token and charge-back dollars per day) summed over the month, and for
    the month in progress exactly ``month_to_date`` (the figure budgets and the summary
    show, over whatever part of it OpenCost holds). Quantities are OpenCost's usage of each
    tenant's own pods over the same days (plus ``tokens``, API tokens per tenant, this month
    only; dollars moved by self-hosted charge-back carry no quantity of their own). A past
    month whose sets start after its first day (OpenCost no longer holds all of it, or only
    the look-back reached it) is left out rather than shown short.

    ``cached``: a previous answer from the same ``infra`` and ``period``: its past months are
    reused as they are, and its month in progress for OpenCost's quantities (measured: 0.23 s
    fresh, 0.008 s reused, for 46 days of 1,900 tenants × 6 resources). A past month's own
    dollars are booked when its days are, so they change only with the sets (the key)."""
    tz = infra.tz
    made: list[Mapping[date, DayFold]] = []

    def folds() -> Mapping[date, DayFold]:  # infra.days made once, when first read
        if not made:
            made.append(infra.days)
        return made[0]

    months: dict[str, list[date]] = defaultdict(list)
    for day in infra.spans:
        months[day.strftime("%Y-%m")].append(day)
    out: dict[str, PeriodBooks] = {}
    # Every key's place in the quantities: where it is first seen over all the days.
    order: tuple[TenantResource, ...] | None = None
    for name, days in months.items():
        hit = cached.get(name) if cached is not None else None
        if hit is not None and name != period:
            out[name] = hit
            continue
        covered_start = min(infra.spans[d][0] for d in days)
        covered_end = max(infra.spans[d][1] for d in days)
        first = min(days)
        if name == period:
            # Whatever OpenCost holds of it: the month to date is computed from the same.
            dollars: Mapping[TenantResource, float] = month_to_date
            covered_end = max(covered_end, now)
        elif name > period or first.day != 1 or covered_start > local_midnight(first, tz) + 1:
            continue  # a later month (none), or one OpenCost holds only part of
        else:
            dollars = {k: v for k, v in _date_sums(by_day, set(days)).items() if v}
        qty: dict[TenantResource, Quantity] = {}
        if hit is not None:
            qty = {k: v for k, v in hit.quantities.items() if k[1] != TOKENS_RESOURCE}
        else:
            if order is None:
                order = tuple(_fold_sums([fold.quantities for fold in folds().values()]))
            summed = _fold_sums([folds()[d].quantities for d in days])
            for key in order:
                value = summed.get(key)
                if value:
                    qty[key] = Quantity(value, QUANTITY_UNITS[key[1]])
        if name == period:
            for tenant, n in tokens.items():
                if n > 0:
                    qty[(tenant, TOKENS_RESOURCE)] = Quantity(n, QUANTITY_UNITS[TOKENS_RESOURCE])
        out[name] = PeriodBooks(name, dollars, qty, covered_start, covered_end)
    return out


def _fold_sums(folds: Sequence[Mapping[TenantResource, float]]) -> dict[TenantResource, float]:
    """The ``fsum`` per key of ``folds``' values, keys in the order first seen. Day folds
    are :class:`DayColumns` whose key tuples are mostly equal from day to day: those are
    summed column-wise (one ``fsum`` per key over a ``zip`` of the days' arrays)."""
    groups: list[tuple[tuple[TenantResource, ...], list[array[float]]]] = []
    for fold in folds:
        if isinstance(fold, DayColumns):
            keys, values = fold.keys_tuple, fold.values_array
        else:
            keys, values = tuple(fold), array("d", fold.values())
        for group in groups:
            if group[0] is keys or group[0] == keys:
                group[1].append(values)
                break
        else:
            groups.append((keys, [values]))
    if len(groups) == 1:
        ((keys, arrays),) = groups
        return dict(zip(keys, map(math.fsum, zip(*arrays, strict=True)), strict=True))
    # Groups in the order of their first day, each the exact keys of that day: iterating
    # them in order meets each key first where it was first seen.
    parts: dict[TenantResource, list[float]] = {}
    for keys, arrays in groups:
        for key, day_values in zip(keys, zip(*arrays, strict=True), strict=True):
            parts.setdefault(key, []).extend(day_values)
    return {k: math.fsum(v) for k, v in parts.items()}


def _date_sums(
    by_day: Mapping[TenantResource, Mapping[date, float]], wanted: set[date]
) -> dict[TenantResource, float]:
    """The ``fsum`` per key of its values on the ``wanted`` days (0.0 for none), in
    ``by_day``'s order; a run of dates shared by many keys (:func:`fold_closed_days`) is looked
    at once, and a contiguous selection summed as an array slice."""
    chosen: dict[int, slice | list[int]] = {}
    out: dict[TenantResource, float] = {}
    fsum = math.fsum
    for key, per_day in by_day.items():
        if not isinstance(per_day, DayColumns):
            out[key] = fsum(u for d, u in per_day.items() if d in wanted)
            continue
        dates = per_day.keys_tuple
        sel = chosen.get(id(dates))
        if sel is None:
            at = [i for i, d in enumerate(dates) if d in wanted]
            contiguous = bool(at) and at[-1] - at[0] + 1 == len(at)
            sel = chosen[id(dates)] = slice(at[0], at[-1] + 1) if contiguous else at
        values = per_day.values_array
        out[key] = fsum(values[sel]) if isinstance(sel, slice) else fsum(values[i] for i in sel)
    return out


# The books' API tokens per tenant with what they were summed from: the token volume (by
# identity: count_token_volume shares it while no counter moved) and the measured models.
ApiTokens = tuple[Mapping[TenantResource, float], frozenset[str], Mapping[str, float]]


def _measured_models(report: Report) -> frozenset[str]:
    if report.tokens is None:
        return frozenset()
    return frozenset(_model_key(m) for (m, _, _, src) in report.tokens.prices if src == "measured")


def _api_tokens_cached(
    report: Report, volume: Mapping[TenantResource, float], cached: ApiTokens | None
) -> ApiTokens:
    """:func:`_api_tokens`, summed again only when the volume or the measured models
    changed (a sum per tenant over every (tenant, model) of the month, every refresh)."""
    measured = _measured_models(report)
    if cached is not None and cached[0] is volume and cached[1] == measured:
        return cached
    return volume, measured, _api_tokens(measured, volume)


def _api_tokens(
    measured: frozenset[str], volume: Mapping[TenantResource, float]
) -> dict[str, float]:
    """Tokens each tenant sent this month to models priced from the price list (what the
    ``tokens`` resource's dollars pay for; self-hosted models' tokens are paid on gpu, cpu
    and ram): ``measured``, the models priced from measurement. Counted since
    ``volume_since``: after a restart without a state file, from then."""
    out: dict[str, list[float]] = defaultdict(list)
    for (tenant, model), n in volume.items():
        if _model_key(model) not in measured:
            out[tenant].append(n)
    return {t: math.fsum(v) for t, v in out.items()}


def _increments(
    accrued: Mapping[LedgerKey, float], previous: Mapping[LedgerKey, float]
) -> dict[LedgerKey, float]:
    """What each counter gained since the previous refresh, as ``increase()`` reads it: a new
    key's whole value, a decrease (a reset) as the whole new value."""
    out: dict[LedgerKey, float] = {}
    for key, value in accrued.items():
        prev = previous.get(key)
        delta = value if prev is None or value < prev else value - prev
        if delta > 0 and math.isfinite(delta):
            out[key] = delta
    return out


# --- ROI -----------------------------------------------------------------------------------


def _initiative_roi(
    initiative: Initiative, cal: RefreshCalendar, month: MonthSpend
) -> InitiativeRoi:
    """ROI of ``initiative``: ai_cost = its tenants' measured GPU, token and other
    infrastructure dollars over ``[period start, now]`` + the configured other cost pro-rated;
    benefits pro-rated to the elapsed part of the period (:func:`compute_roi`)."""
    now, tz = cal.now, cal.tz
    infra_available, infra_start = month.infra_available, month.infra_start
    window: RoiWindow = initiative_window(initiative, now, tz)
    first = local_date(window.start, tz)
    last = min(local_date(max(window.start, window.as_of - 1e-6), tz), cal.today)
    gpu: list[float] = []
    tokens: list[float] = []
    other: list[float] = []
    if window.as_of > window.start:
        for tenant in dict.fromkeys(initiative.tenants):
            for (_, resource), days in month.tenant_days(tenant):
                if not infra_available and resource != TOKENS_RESOURCE:
                    continue
                total = math.fsum(v for d, v in days if first <= d <= last)
                {"gpu": gpu, TOKENS_RESOURCE: tokens}.get(resource, other).append(total)
    cost = AiCost(
        gpu_usd=math.fsum(gpu),
        tokens_usd=math.fsum(tokens),
        other_usd=math.fsum(other) + initiative.other_infra_cost_usd * window.realized_fraction,
    )
    result = compute_roi(initiative.benefits, cost, window.period_days, window.realized_fraction)
    extra: list[str] = []
    if not infra_available:
        extra.append(
            "no OpenCost month-to-date data: ai_cost counts token dollars and configured "
            "other cost only"
        )
    elif isinstance(initiative.period, DateRange) and (infra_start is None or first < infra_start):
        covered = infra_start.isoformat() if infra_start else "nowhere"
        extra.append(f"measured cost covers only from {covered} (the query's history)")
    if extra:
        result = replace(result, reasons=(*result.reasons, *extra))
    return InitiativeRoi(initiative.name, initiative.tenants, window, result)


# --- routing -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)  # pure; asked per (tenant, model) every refresh
def _model_key(name: str) -> str:
    return strip_route(name).strip().lower()


def _monthly_tokens(w: Workload, volume: Mapping[TenantResource, float], observed: float) -> float:
    """The workload's observed tokens per month: tokens its tenant (any tenant for
    ``__all__``) sent to its current model this month, per second observed, × a month
    (730 h). 0 without a current model or before a second of observation."""
    if w.current_model is None or observed <= 0:
        return 0.0
    model = _model_key(w.current_model)
    n = math.fsum(
        v
        for (tenant, m), v in volume.items()
        if _model_key(m) == model and (w.tenant == GLOBAL_TENANT or tenant == w.tenant)
    )
    return n / observed * SECONDS_PER_MONTH


def _price_lookup(report: Report, catalog: LlmPriceCatalog | None) -> PriceLookup:
    """USD per 1M tokens for a candidate: the measured self-hosted price when the model is
    served here (``source="measured"``), else the price list (``"price_list"``)."""
    measured: dict[str, dict[str, float]] = defaultdict(dict)
    listed: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    if report.tokens is not None:
        for (model, provider, token_type, source), usd in report.tokens.prices.items():
            if source == "measured":
                measured[_model_key(model)][token_type] = usd
            else:
                listed[(_model_key(model), provider)][token_type] = usd

    def lookup(model: str, provider: str) -> ModelPrice | None:
        m = measured.get(_model_key(model))
        if m and "input" in m and "output" in m:
            return ModelPrice(m["input"], m["output"], "measured")
        if catalog is not None:
            found = catalog.lookup(model, provider)
            if found is not None:
                return ModelPrice(
                    _per_million(found.input), _per_million(found.output), "price_list"
                )
        seen = listed.get((_model_key(model), provider))
        if seen and "input" in seen and "output" in seen:
            return ModelPrice(seen["input"], seen["output"], "price_list")
        return None

    return lookup


def _per_million(usd_per_token: float) -> float:
    return float(f"{usd_per_token * PER_MILLION:.15g}")


def _latency_lookup(measured: Mapping[tuple[str, str], float]) -> LatencyLookup:
    by_model = {(_model_key(m), p): v for (m, p), v in measured.items()}

    def lookup(model: str, provider: str) -> float | None:
        return by_model.get((_model_key(model), provider))

    return lookup


# --- recommendations -----------------------------------------------------------------------


def _recommendations(
    report: Report,
    inputs: FinanceInputs,
    ctx: FinanceContext,
    pricer: GpuPricer,
    peaks: Mapping[TenantResource, Mapping[int, float]],
    since: Mapping[TenantResource, float],
    routing: Sequence[RoutingResult],
    routing_window: float,
    budgets: Iterable[BudgetStatus],
    now: float,
    pod_model: Mapping[tuple[str, str], tuple[str, float]],
    extremes: Mapping[TenantResource, PeakExtremes] | None = None,
    kept: frozenset[str] | None = None,
) -> tuple[Recommendation, ...]:
    """``pod_model``: each pod's GPU model (and when it was seen); ``extremes``: each key's
    highest hourly peak where known (:class:`GpuUsage`); ``kept``: the published tenants
    when the report folds some (:func:`published_tenants`)."""
    extremes = extremes or {}

    def price_of(name: str) -> float | None:
        found = pricer.price(name)
        return found[0] if found else None

    options = gpu_options(ctx.gpu_specs, price_of)
    # A utilization workload is read by right-sizing only, and only when its GPU model is
    # among the options (spot reads labelled pods): the others are not made (~3,000 a
    # refresh at 2,000 tenants, none of them read when no GPU is configured to move to).
    sizable = _sizable_models(ctx.policy, options, peaks)
    idle_stats = sorted((k, s) for k, s in report.gpu_stats.items() if s.idle_gpus > 0)
    # The GPU cost rate of the (tenant, GPU model) keys read below only: the shares of the
    # others (most of ~12k a refresh) are passed over in C.
    wanted = {k for k, _ in idle_stats}
    if sizable:
        wanted.update(k for k in peaks if k[1] in sizable)
    gpu_rate: dict[TenantResource, list[float]] = defaultdict(list)
    shares = report.cost.shares
    tenants, models = map(attrgetter("tenant"), shares), map(attrgetter("gpu_model"), shares)
    share_keys = zip(tenants, models, strict=True)
    for share in compress(shares, map(wanted.__contains__, share_keys)):
        gpu_rate[(share.tenant, share.gpu_model)].append(share.alloc_rate)
    rate = {k: math.fsum(v) for k, v in gpu_rate.items()}

    idle = [
        IdleGpuFinding(
            tenant=tenant,
            gpu_model=model,
            idle_gpus=s.idle_gpus,
            idle_usd_per_hour=s.idle_rate,
            gpu_usd_per_hour=rate.get((tenant, model), 0.0),
            # At least the idle window: a GPU is idle only after a full window below threshold.
            idle_for_seconds=ctx.idle_window_seconds,
        )
        for (tenant, model), s in idle_stats
    ]
    workloads = [
        GpuWorkload(
            tenant=tenant,
            workload=f"{tenant} on {model}",
            gpu_model=model,
            gpus=report.gpu_stats[(tenant, model)].held,
            usd_per_hour=rate.get((tenant, model), 0.0),
            window_seconds=max(0.0, now - since.get((tenant, model), now)),
            peak_utilization=_highest(extremes, (tenant, model), hourly),
        )
        for (tenant, model), hourly in sorted(peaks.items())
        if tenant != IDLE_TENANT and model in sizable
    ]
    workloads += _spot_candidates(report, inputs.allocations, ctx.policy, pod_model, kept)

    def spot_price(model: str) -> SpotPrice | None:
        found = pricer.catalog.lookup(model)
        if found is None or pricer.purchase_option == "spot":
            return None
        return SpotPrice(found[1].on_demand, found[1].spot)

    return build_recommendations(
        ctx.policy,
        MonthlySpend(report.tenant_rates("allocation")),
        idle=idle,
        workloads=workloads,
        options=options,
        spot_prices=spot_price,
        routing=routing,
        routing_window_seconds=routing_window,
        budgets=budgets,
    )


class MonthlySpend(Mapping[str, float]):
    """Each tenant's cost rate × a month: the ``fsum`` of its keys' ``rate × 730``, made for
    a tenant when asked. Why: the cap reads only the tenants whose recommendations save
    something (tens), not the ~2,000 a sum over every rate made each refresh."""

    def __init__(self, rates: Mapping[TenantResource, float]) -> None:
        self._rates = rates
        self._resources = tuple(dict.fromkeys(map(itemgetter(1), rates)))

    def __getitem__(self, tenant: str) -> float:
        rates = self._rates
        found = [rates[k] for k in zip(repeat(tenant), self._resources) if k in rates]
        if not found:
            raise KeyError(tenant)
        return math.fsum([r * HOURS_PER_MONTH for r in found])

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(map(itemgetter(0), self._rates)))

    def __len__(self) -> int:
        return len(dict.fromkeys(map(itemgetter(0), self._rates)))


def _highest(
    known: Mapping[TenantResource, PeakExtremes], key: TenantResource, hourly: Mapping[int, float]
) -> float | None:
    """The highest of ``hourly`` (``None`` when empty), from ``known`` where it is there."""
    if not hourly:
        return None
    found = known.get(key)
    return max(hourly.values()) if found is None else found[2]


def _sizable_models(
    policy: RecommendationPolicy,
    options: Sequence[GpuOption],
    peaks: Mapping[TenantResource, Mapping[int, float]],
) -> frozenset[str]:
    """The GPU models of ``peaks`` that right-sizing can match to an option (what
    :func:`recommend_rightsizing` looks up; it skips a workload of any other model)."""
    if not policy.rightsize or not options:
        return frozenset()
    names = {normalize_gpu_model(o.name) for o in options}
    models = {model for _, model in peaks}
    return frozenset(m for m in models if normalize_gpu_model(m) in names)


def _sanitized(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def _spot_candidates(
    report: Report,
    allocations: AllocationSet | None,
    policy: RecommendationPolicy,
    pod_model: Mapping[tuple[str, str], tuple[str, float]],
    kept: frozenset[str] | None = None,
) -> list[GpuWorkload]:
    """Fault-tolerant GPU pods (label ``policy.spot_label_key`` = ``spot_label_value``, raw or
    as OpenCost sanitizes it) grouped per (tenant, namespace, GPU model); their GPU cost rate
    from the rate query, their observation window the rate query's window. Rightsizing never
    sees these (no utilization peak), so the two kinds do not double count a pod."""
    if allocations is None or not policy.spot:
        return []
    keys = tuple(dict.fromkeys((policy.spot_label_key, _sanitized(policy.spot_label_key))))
    wanted = policy.spot_label_value
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    # The labelled rows found in C (a few of ~20k rows a refresh at 2,000 tenants).
    rows = allocations.allocations
    labels = list(map(attrgetter("labels"), rows))
    labelled: Iterator[bool] = iter(())
    for i, k in enumerate(keys):
        found = map(eq, repeat(wanted), map(methodcaller("get", k), labels))
        labelled = found if i == 0 else map(or_, labelled, found)
    for row in compress(rows, labelled):
        if row.gpu_cost <= 0 or not row.namespace or not row.pod:
            continue
        seen = pod_model.get((row.namespace, row.pod))
        tenant = report.cost.pod_tenants.get((row.namespace, row.pod))
        if seen is None or tenant is None:
            continue
        model = seen[0]
        if report.cost.folded_tenants:
            if kept is None:
                kept = published_tenants(report)
            if tenant not in kept:
                tenant = OTHER_TENANT
        groups[(tenant, row.namespace, model)].append(row.gpu_cost / allocations.window_hours)
    return [
        GpuWorkload(
            tenant=tenant,
            workload=f"{namespace} ({model})",
            gpu_model=model,
            gpus=0.0,
            usd_per_hour=math.fsum(rates),
            window_seconds=allocations.window_hours * SECONDS_PER_HOUR,
            labels={policy.spot_label_key: policy.spot_label_value},
        )
        for (tenant, namespace, model), rates in sorted(groups.items())
    ]
