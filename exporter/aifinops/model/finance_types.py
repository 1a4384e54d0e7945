"""The finance step's configuration and result types, apart from the step itself.

:class:`~aifinops.model.report.ModelContext` carries a :class:`FinanceContext`, while the
finance step (:mod:`aifinops.model.finance`) reads a report and returns a
:class:`FinanceReport` that travels beside it (the refresh's snapshot): the types live here so
the report module and the finance module need not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aifinops.model.budgets import Budget, BudgetStatus
from aifinops.model.chargeback import Quantity
from aifinops.model.recommend import GpuSpec, Recommendation, RecommendationPolicy
from aifinops.model.roi import Initiative, InitiativeRoi
from aifinops.model.routing import LatencyLookup, PriceLookup, RoutingResult, Workload

DEFAULT_HISTORY_MONTHS = 13

LedgerKey = tuple[str, str, str]  # (tenant, resource, basis)
TenantResource = tuple[str, str]


@dataclass(frozen=True, slots=True)
class FinanceContext:
    """The finance configuration compiled for the model (``Settings.finance_to_model``)."""

    tz: str = "UTC"
    lookback_days: int = 28
    budgets: tuple[Budget, ...] = ()
    initiatives: tuple[Initiative, ...] = ()
    workloads: tuple[Workload, ...] = ()
    policy: RecommendationPolicy = field(default_factory=RecommendationPolicy)
    gpu_specs: tuple[GpuSpec, ...] = ()
    idle_window_seconds: float = 900.0
    history_months: int = DEFAULT_HISTORY_MONTHS
    # Whole months before the current one that OpenCost's daily sets cover (the month
    # query's ``sources.opencost.history_months``): the exporter keeps its own daily ledger
    # (tokens, charge-back) that far back too, so those months' chargeback is complete.
    books_months: int = 1

    def workload(self, name: str) -> Workload | None:
        return next((w for w in self.workloads if w.name == name), None)


@dataclass(frozen=True, slots=True)
class FinanceReport:
    """Finance figures at ``now`` (see the module docstring for the definitions).

    ``month_to_date[(tenant, resource)]`` and ``tenant_month_to_date[tenant]``: USD since the
    month start (empty when ``infra_available`` is false: without OpenCost's daily sets the
    infrastructure part is unknown and no month-to-date figure is published).
    ``budgets``: the configured budgets that could be evaluated; ``budget_notes`` says why any
    was left out. ``cluster``: the whole cluster's month-to-date spend and month-end forecast
    (its ``budget_usd`` is the global all-scope budget, or 0 when there is none).
    ``routing_window_seconds``: how long this month's token volume was observed.
    """

    now: float
    tz: str
    period: str
    month_start: float
    infra_available: bool
    month_to_date: Mapping[TenantResource, float]
    tenant_month_to_date: Mapping[str, float]
    budgets: tuple[BudgetStatus, ...]
    budget_notes: tuple[str, ...]
    cluster: BudgetStatus | None
    initiatives: tuple[InitiativeRoi, ...]
    routing: tuple[RoutingResult, ...]
    routing_window_seconds: float
    recommendations: tuple[Recommendation, ...]
    periods: Mapping[str, Mapping[LedgerKey, float]]
    idle_cost_usd_per_hour: float
    prices: PriceLookup
    latencies: LatencyLookup
    monthly_tokens: Mapping[str, float] = field(default_factory=dict)  # per workload
    books: Mapping[str, PeriodBooks] = field(default_factory=dict)
    ledger_since: Mapping[str, float] = field(default_factory=dict)

    def initiative(self, name: str) -> InitiativeRoi | None:
        return next((i for i in self.initiatives if i.name == name), None)

    def routing_result(self, name: str) -> RoutingResult | None:
        return next((r for r in self.routing if r.workload == name), None)

    def period_dollars(self, period: str, basis: str) -> dict[TenantResource, float] | None:
        """USD per (tenant, resource) accrued in ``period`` on ``basis``; ``None`` when the
        exporter holds nothing for that period."""
        ledger = self.periods.get(period)
        if ledger is None:
            return None
        return {(t, r): v for (t, r, b), v in ledger.items() if b == basis}


@dataclass(frozen=True, slots=True)
class PeriodBooks:
    """A calendar month's allocation-basis dollars from the books of record (see
    :func:`period_books`): USD per (tenant, resource), measured usage per (tenant,
    resource), and ``[covered_start, covered_end)``, the span OpenCost's daily sets cover
    (unix seconds; the end is ``now`` for the month in progress)."""

    period: str
    dollars: Mapping[TenantResource, float]
    quantities: Mapping[TenantResource, Quantity]
    covered_start: float
    covered_end: float
