"""Monthly budgets per tenant (and one global budget): used ratio, month-end forecast, days to
exhaustion and state. Pure; ``now`` and the time zone are arguments.

State, with ``ratio = spend / amount`` (``amount > 0``), checked in this order:

* ``exceeded`` — ``spend > amount`` (strictly more than the budget);
* ``critical`` — ``ratio >= critical`` (and not exceeded; with the default ``critical = 1.0``
  this is ``spend == amount`` exactly);
* ``warning`` — ``ratio >= warning`` (exactly at the warning threshold is a warning);
* ``ok`` — otherwise.

A zero budget has no ratio (``used_ratio`` is ``None``); it is ``critical`` at zero spend (the
whole budget is used) and ``exceeded`` at any spend above zero.

``days_to_exhaustion`` is ``0.0`` once ``spend >= amount``; otherwise the days from ``now``
until the projected spend path (see :mod:`aifinops.model.forecast`) reaches the amount, or
``None`` when it is not projected to within this month (the budget resets on the 1st).

Scopes: ``all`` (every resource), ``gpu`` (resource ``gpu``), ``tokens`` (resource
``tokens``). The global budget's tenant is :data:`GLOBAL_TENANT`; its spend is the sum over
every tenant, ``__idle__`` and ``__unallocated__`` included (:func:`scope_totals`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from aifinops.model.calendar import MonthBounds, elapsed_days, local_today, month_bounds
from aifinops.model.forecast import (
    DEFAULT_LOOKBACK_DAYS,
    DailyFit,
    Forecast,
    fit_daily,
    project_month_end,
)
from aifinops.model.vocabulary import GLOBAL_TENANT as GLOBAL_TENANT

__all__ = [
    "BUDGET_SCOPES",
    "BUDGET_STATES",
    "GLOBAL_TENANT",
    "Budget",
    "BudgetScope",
    "BudgetState",
    "BudgetStatus",
    "MonthBounds",
    "budget_state",
    "elapsed_days",
    "evaluate_budget",
    "evaluate_budget_fitted",
    "evaluate_budgets",
    "month_bounds",
    "scope_series",
    "scope_totals",
    "scopes_of",
]

BudgetScope = Literal["all", "gpu", "tokens"]
BudgetState = Literal["ok", "warning", "critical", "exceeded"]
BUDGET_SCOPES: tuple[BudgetScope, ...] = ("all", "gpu", "tokens")
BUDGET_STATES: tuple[BudgetState, ...] = ("ok", "warning", "critical", "exceeded")


@dataclass(frozen=True, slots=True)
class Budget:
    """A monthly budget in USD. Thresholds are fractions of ``amount_usd`` with
    ``0 < warning <= critical <= 1`` (validated in the settings)."""

    tenant: str
    amount_usd: float
    warning: float = 0.8
    critical: float = 1.0
    scope: BudgetScope = "all"


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget evaluated at ``now``. Money in USD (float, gauge values)."""

    tenant: str
    scope: BudgetScope
    budget_usd: float
    spend_usd: float  # month to date
    used_ratio: float | None  # spend / budget; None for a zero budget
    forecast_usd: float  # projected month-end spend, >= spend_usd
    days_to_exhaustion: float | None
    state: BudgetState
    forecast: Forecast
    warning: float
    critical: float


def budget_state(
    spend_usd: float, amount_usd: float, warning: float, critical: float
) -> BudgetState:
    """The state for a spend against a budget; see the module docstring for the rules."""
    if spend_usd > amount_usd:
        return "exceeded"
    if amount_usd <= 0:
        return "critical"
    ratio = spend_usd / amount_usd
    if ratio >= critical:
        return "critical"
    if ratio >= warning:
        return "warning"
    return "ok"


def evaluate_budget(
    budget: Budget,
    spend_usd: float,
    daily: Iterable[tuple[float, float]],
    now: float,
    tz: str,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> BudgetStatus:
    """Evaluate one budget from its scope's month-to-date spend (USD) and daily series
    (``(day_start unix seconds, USD)``; see :func:`~aifinops.model.forecast.forecast_month_end`)."""
    fit = fit_daily(daily, local_today(now, tz), tz, lookback_days)
    return evaluate_budget_fitted(budget, spend_usd, fit, now, tz)


def evaluate_budget_fitted(
    budget: Budget, spend_usd: float, fit: DailyFit, now: float, tz: str
) -> BudgetStatus:
    """:func:`evaluate_budget` from its daily series' fit made the same local day (the
    refresh keeps the fit until a closed day changes: :mod:`aifinops.model.finance`)."""
    fc = project_month_end(spend_usd, fit, now, tz)
    spend = fc.spend_to_date_usd
    amount = budget.amount_usd
    days = 0.0 if spend >= amount else fc.days_until(amount - spend)
    return BudgetStatus(
        tenant=budget.tenant,
        scope=budget.scope,
        budget_usd=amount,
        spend_usd=spend,
        used_ratio=spend / amount if amount > 0 else None,
        forecast_usd=fc.month_end_usd,
        days_to_exhaustion=days,
        state=budget_state(spend, amount, budget.warning, budget.critical),
        forecast=fc,
        warning=budget.warning,
        critical=budget.critical,
    )


def evaluate_budgets(
    budgets: Sequence[Budget],
    spend: Mapping[tuple[str, BudgetScope], float],
    daily: Mapping[tuple[str, BudgetScope], Sequence[tuple[float, float]]],
    now: float,
    tz: str,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> tuple[BudgetStatus, ...]:
    """Evaluate every budget. ``spend`` and ``daily`` are keyed by ``(tenant, scope)`` (build
    them with :func:`scope_totals` / :func:`scope_series`); a missing key means no spend and no
    history."""
    return tuple(
        evaluate_budget(
            b,
            spend.get((b.tenant, b.scope), 0.0),
            daily.get((b.tenant, b.scope), ()),
            now,
            tz,
            lookback_days,
        )
        for b in budgets
    )


def scopes_of(resource: str) -> tuple[BudgetScope, ...]:
    """The budget scopes a resource's dollars count in."""
    if resource == "gpu":
        return ("all", "gpu")
    if resource == "tokens":
        return ("all", "tokens")
    return ("all",)


def scope_totals(
    by_resource: Mapping[tuple[str, str], float],
) -> dict[tuple[str, BudgetScope], float]:
    """Month-to-date USD per ``(tenant, resource)`` → per ``(tenant, scope)``, plus the
    :data:`GLOBAL_TENANT` totals over every tenant. The resources must not double count (e.g.
    self-hosted token cost and the GPU cost it was derived from)."""
    parts: dict[tuple[str, BudgetScope], list[float]] = defaultdict(list)
    for (tenant, resource), usd in by_resource.items():
        for scope in scopes_of(resource):
            parts[(tenant, scope)].append(usd)
            if tenant != GLOBAL_TENANT:
                parts[(GLOBAL_TENANT, scope)].append(usd)
    return {k: math.fsum(v) for k, v in parts.items()}


def scope_series(
    by_resource: Mapping[tuple[str, str], Iterable[tuple[float, float]]],
) -> dict[tuple[str, BudgetScope], list[tuple[float, float]]]:
    """Daily ``(day_start, USD)`` series per ``(tenant, resource)`` → per ``(tenant, scope)``
    (summed per ``day_start``, sorted), plus the :data:`GLOBAL_TENANT` series."""
    parts: dict[tuple[str, BudgetScope], dict[float, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for (tenant, resource), series in by_resource.items():
        for ts, usd in series:
            for scope in scopes_of(resource):
                parts[(tenant, scope)][ts].append(usd)
                if tenant != GLOBAL_TENANT:
                    parts[(GLOBAL_TENANT, scope)][ts].append(usd)
    return {k: [(ts, math.fsum(v)) for ts, v in sorted(days.items())] for k, days in parts.items()}
