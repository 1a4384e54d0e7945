"""Return on investment per AI initiative. Pure; ``now`` and the time zone are arguments.

Benefits over the initiative's period (inputs from config or a what-if request, USD):

* productivity = ``hours_saved × hourly_rate × headcount`` (hours saved *per person* over the
  period, USD per hour, people);
* quality = ``error_reduction_rate × avg_error_cost`` (errors avoided over the period — a
  count per period, not a percentage — times USD per error);
* risk = ``incidents_prevented × avg_incident_cost`` (incidents over the period × USD each).

``ai_cost`` = measured GPU + token cost of the initiative's tenants over the same period +
other infrastructure cost (configured for the whole period). Then

* ``roi_ratio = (benefits − ai_cost) / ai_cost`` (1.5 means +150 %); with ``ai_cost == 0`` it
  is ``None`` and ``reason`` says why — never infinity;
* ``payback_days = ai_cost / (benefits per day)`` with benefits per day = the period's gross
  benefits / the period's days; ``None`` when there is no benefit.

A period still in progress (``period: month``, or an end date in the future) is evaluated to
date: the stated benefits and the configured other cost are pro-rated by the fraction of the
period elapsed, and the measured cost is the cost so far. Money is float USD (gauges).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from aifinops.model.calendar import month_bounds

BenefitKind = Literal["productivity", "quality", "risk"]
BENEFIT_KINDS: tuple[BenefitKind, ...] = ("productivity", "quality", "risk")
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class BenefitInputs:
    """Benefit drivers over one whole period; all ≥ 0 (validated in settings and schemas)."""

    hours_saved: float = 0.0
    hourly_rate: float = 0.0
    headcount: float = 0.0
    error_reduction_rate: float = 0.0
    avg_error_cost: float = 0.0
    incidents_prevented: float = 0.0
    avg_incident_cost: float = 0.0


@dataclass(frozen=True, slots=True)
class AiCost:
    """AI cost over the evaluated window, USD."""

    gpu_usd: float = 0.0
    tokens_usd: float = 0.0
    other_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        return math.fsum((self.gpu_usd, self.tokens_usd, self.other_usd))


@dataclass(frozen=True, slots=True)
class RoiResult:
    """ROI of one initiative (or one what-if). ``benefits_usd`` and ``ai_cost`` cover the
    evaluated window; ``benefit_usd_per_day`` is the period's gross benefit per day."""

    benefits_usd: float
    breakdown: Mapping[BenefitKind, float]
    ai_cost: AiCost
    net_benefit_usd: float
    roi_ratio: float | None
    payback_days: float | None
    benefit_usd_per_day: float
    period_days: float
    realized_fraction: float
    reasons: tuple[str, ...] = ()  # why roi_ratio or payback_days is None


def benefit_breakdown(b: BenefitInputs, fraction: float = 1.0) -> dict[BenefitKind, float]:
    """Gross benefit per kind (USD) over ``fraction`` of the period."""
    return {
        "productivity": b.hours_saved * b.hourly_rate * b.headcount * fraction,
        "quality": b.error_reduction_rate * b.avg_error_cost * fraction,
        "risk": b.incidents_prevented * b.avg_incident_cost * fraction,
    }


def compute_roi(
    benefits: BenefitInputs,
    ai_cost: AiCost,
    period_days: float,
    realized_fraction: float = 1.0,
) -> RoiResult:
    """ROI over ``realized_fraction`` (0–1) of a period of ``period_days`` (> 0) days, with
    ``benefits`` stated for the whole period and ``ai_cost`` measured over the realized part.
    """
    if not period_days > 0:
        raise ValueError(f"period_days must be > 0, got {period_days}")
    fraction = min(1.0, max(0.0, realized_fraction))
    breakdown = benefit_breakdown(benefits, fraction)
    total_benefit = math.fsum(breakdown.values())
    per_day = math.fsum(benefit_breakdown(benefits).values()) / period_days
    cost = ai_cost.total_usd
    reasons: list[str] = []
    roi: float | None = None
    if cost > 0:
        roi = (total_benefit - cost) / cost
    elif fraction == 0:
        reasons.append("the period has not started: no cost and no benefit yet")
    else:
        reasons.append("ai_cost is 0 over the period: ROI is undefined (not infinite)")
    payback: float | None = None
    if per_day > 0:
        payback = cost / per_day
    else:
        reasons.append("no gross benefit: payback period is undefined")
    return RoiResult(
        benefits_usd=total_benefit,
        breakdown=breakdown,
        ai_cost=ai_cost,
        net_benefit_usd=total_benefit - cost,
        roi_ratio=roi,
        payback_days=payback,
        benefit_usd_per_day=per_day,
        period_days=period_days,
        realized_fraction=fraction,
        reasons=tuple(reasons),
    )


# --- initiatives from configuration ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DateRange:
    """Calendar dates, both inclusive, in the configured time zone."""

    start: date
    end: date


@dataclass(frozen=True, slots=True)
class Initiative:
    """An AI initiative that owns the AI cost of ``tenants``. ``period`` is ``"month"`` (the
    calendar month containing ``now``) or a :class:`DateRange`. ``other_infra_cost_usd`` is
    extra infrastructure cost over the whole period."""

    name: str
    tenants: tuple[str, ...]
    benefits: BenefitInputs
    period: Literal["month"] | DateRange = "month"
    other_infra_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class RoiWindow:
    """The period (unix seconds, ``end`` exclusive) and the part of it evaluated now:
    measure the tenants' cost over ``[start, as_of)``."""

    start: float
    end: float
    as_of: float
    period_days: float
    realized_fraction: float


def initiative_window(initiative: Initiative, now: float, tz: str) -> RoiWindow:
    """Resolve an initiative's period at ``now`` in time zone ``tz``. ``period_days`` counts
    calendar days (a ``DateRange`` of one date is one day; a month is 28–31 days)."""
    if initiative.period == "month":
        bounds = month_bounds(now, tz)
        start, end, days = bounds.start, bounds.end, float(bounds.days)
    else:
        zone = ZoneInfo(tz)
        d0, d1 = initiative.period.start, initiative.period.end + timedelta(days=1)
        start = datetime(d0.year, d0.month, d0.day, tzinfo=zone).timestamp()
        end = datetime(d1.year, d1.month, d1.day, tzinfo=zone).timestamp()
        days = float((d1 - d0).days)
    as_of = min(max(now, start), end)
    return RoiWindow(start, end, as_of, days, (as_of - start) / (end - start))


@dataclass(frozen=True, slots=True)
class InitiativeRoi:
    name: str
    tenants: tuple[str, ...]
    window: RoiWindow
    result: RoiResult


def evaluate_initiative(
    initiative: Initiative, window: RoiWindow, gpu_usd: float, tokens_usd: float
) -> InitiativeRoi:
    """ROI of a configured initiative from its tenants' measured GPU and token cost (USD) over
    ``[window.start, window.as_of)``; the configured other cost is pro-rated to the window."""
    cost = AiCost(
        gpu_usd=gpu_usd,
        tokens_usd=tokens_usd,
        other_usd=initiative.other_infra_cost_usd * window.realized_fraction,
    )
    result = compute_roi(initiative.benefits, cost, window.period_days, window.realized_fraction)
    return InitiativeRoi(initiative.name, initiative.tenants, window, result)
