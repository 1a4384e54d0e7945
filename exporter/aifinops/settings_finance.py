"""Configuration sections for the finance features: ``budgets:``, ``initiatives:``,
``routing:`` and ``recommendations:``. Strict (unknown keys are errors) and frozen, like
:mod:`aifinops.settings`; each section converts to the pure model's types with ``to_model()``.

Add them to :class:`aifinops.settings.Settings` as::

    budgets: BudgetsSettings = Field(default_factory=BudgetsSettings)
    initiatives: InitiativeList = ()
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    recommendations: RecommendationsSettings = Field(default_factory=RecommendationsSettings)

The budgets' ``time_zone`` is the finance time zone: month-to-date, ROI ``period: month`` and
chargeback periods all follow it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from aifinops.model.vocabulary import GLOBAL_TENANT

# The model's types are imported where a section becomes model objects (``to_model``), which
# only the refresh engine calls: the front process validates the same configuration without
# importing the model and numpy (tests/test_architecture.py).
if TYPE_CHECKING:
    from aifinops.model.budgets import Budget
    from aifinops.model.recommend import GpuSpec, RecommendationPolicy
    from aifinops.model.roi import BenefitInputs, Initiative
    from aifinops.model.routing import (
        Candidate,
        Constraints,
        ModelPrice,
        TokenMix,
        Weights,
        Workload,
    )

SUM_TOLERANCE = 1e-9
"""How far weights and token shares may be from summing to 1."""

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Label = Annotated[str, Field(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_time_zone(tz: str) -> str:
    """``tz`` if it is an IANA time zone name zoneinfo knows, else :class:`ValueError`."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r} (use an IANA name such as 'Europe/Paris')"
        ) from exc
    return tz


def _unique(values: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r}")
        seen.add(v)


# --- budgets -------------------------------------------------------------------------------


class BudgetEntry(_Strict):
    """One monthly budget; ``tenant: __all__`` is the global budget."""

    tenant: Label
    amount_usd: NonNegative
    warning: float = Field(0.8, gt=0, le=1, allow_inf_nan=False)
    critical: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    scope: Literal["all", "gpu", "tokens"] = "all"

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> BudgetEntry:
        if self.warning > self.critical:
            raise ValueError(
                f"warning ({self.warning}) must be <= critical ({self.critical}); "
                "thresholds are fractions of the amount with 0 < warning <= critical <= 1 "
                "(above 1 the budget is already 'exceeded')"
            )
        return self

    def to_model(self) -> Budget:
        from aifinops.model.budgets import Budget

        return Budget(self.tenant, self.amount_usd, self.warning, self.critical, self.scope)


class BudgetsSettings(_Strict):
    time_zone: str = "UTC"
    lookback_days: int = Field(28, ge=3, le=366)  # full days the forecast's trend fit uses
    # How often the month-to-date query (OpenCost daily sets since the month start, and the
    # lookback before it) runs; the cost rate covers the time since the last one.
    refresh_interval_seconds: float = Field(600.0, ge=10, le=86_400)
    tenants: tuple[BudgetEntry, ...] = ()

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        return check_time_zone(v)

    @field_validator("tenants")
    @classmethod
    def _one_per_tenant(cls, v: tuple[BudgetEntry, ...]) -> tuple[BudgetEntry, ...]:
        # One budget per tenant keeps the budget series labelled by tenant alone; it also
        # makes the global budget (tenant __all__) at most one.
        _unique([b.tenant for b in v], "budget for tenant")
        return v

    @property
    def global_budget(self) -> BudgetEntry | None:
        return next((b for b in self.tenants if b.tenant == GLOBAL_TENANT), None)

    def to_model(self) -> tuple[Budget, ...]:
        return tuple(b.to_model() for b in self.tenants)


class ChargebackSettings(_Strict):
    """Who bills whom in the chargeback's FOCUS export (``/api/v1/chargeback?format=focus``):
    the billing account the rows are invoiced to, the names of the provider, publisher and
    invoice issuer (an internal platform team, usually), and the cluster named in each row's
    ``x_Cluster`` (empty: ``state.cluster_name``; both empty: null)."""

    billing_account_id: str = Field("aifinops", min_length=1, max_length=256)
    billing_account_name: str = Field("AI FinOps chargeback", min_length=1, max_length=256)
    provider_name: str = Field("Internal AI platform", min_length=1, max_length=256)
    publisher_name: str = Field("Internal AI platform", min_length=1, max_length=256)
    invoice_issuer_name: str = Field("Internal AI platform", min_length=1, max_length=256)
    cluster: str = Field("", max_length=256)


# --- initiatives ---------------------------------------------------------------------------


class BenefitSettings(_Strict):
    """Benefit drivers over the initiative's whole period (see :mod:`aifinops.model.roi`)."""

    hours_saved: NonNegative = 0.0  # per person, over the period
    hourly_rate: NonNegative = 0.0  # USD per hour
    headcount: NonNegative = 0.0
    error_reduction_rate: NonNegative = 0.0  # errors avoided over the period (a count)
    avg_error_cost: NonNegative = 0.0  # USD per error
    incidents_prevented: NonNegative = 0.0
    avg_incident_cost: NonNegative = 0.0  # USD per incident

    def to_model(self) -> BenefitInputs:
        from aifinops.model.roi import BenefitInputs

        return BenefitInputs(**self.model_dump())


class PeriodRange(_Strict):
    """Calendar dates, both inclusive, in the finance time zone."""

    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> PeriodRange:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self


class InitiativeSettings(_Strict):
    name: Label
    tenants: tuple[Label, ...] = Field(min_length=1)
    period: Literal["month"] | PeriodRange = "month"
    benefits: BenefitSettings = Field(default_factory=BenefitSettings)
    other_infra_cost_usd: NonNegative = 0.0  # over the whole period

    def to_model(self) -> Initiative:
        from aifinops.model.roi import DateRange, Initiative

        period: Literal["month"] | DateRange = (
            "month" if self.period == "month" else DateRange(self.period.start, self.period.end)
        )
        return Initiative(
            name=self.name,
            tenants=self.tenants,
            benefits=self.benefits.to_model(),
            period=period,
            other_infra_cost_usd=self.other_infra_cost_usd,
        )


def _unique_initiatives(v: tuple[InitiativeSettings, ...]) -> tuple[InitiativeSettings, ...]:
    _unique([i.name for i in v], "initiative name")
    return v


InitiativeList = Annotated[tuple[InitiativeSettings, ...], AfterValidator(_unique_initiatives)]
"""The ``initiatives:`` section: a list of initiatives with unique names."""


def initiatives_to_model(items: Sequence[InitiativeSettings]) -> tuple[Initiative, ...]:
    return tuple(i.to_model() for i in items)


# --- routing -------------------------------------------------------------------------------


def _sums_to_one(values: Sequence[float], what: str) -> None:
    total = math.fsum(values)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{what} must sum to 1 (within {SUM_TOLERANCE:g}), got {total!r}")


class WeightsSettings(_Strict):
    cost: Fraction = 0.5
    quality: Fraction = 0.3
    latency: Fraction = 0.2

    @model_validator(mode="after")
    def _sum(self) -> WeightsSettings:
        _sums_to_one((self.cost, self.quality, self.latency), "weights cost + quality + latency")
        return self

    def to_model(self) -> Weights:
        from aifinops.model.routing import Weights

        return Weights(self.cost, self.quality, self.latency)


class TokenMixSettings(_Strict):
    input: Fraction = 0.75
    output: Fraction = 0.25

    @model_validator(mode="after")
    def _sum(self) -> TokenMixSettings:
        _sums_to_one((self.input, self.output), "token_mix input + output")
        return self

    def to_model(self) -> TokenMix:
        from aifinops.model.routing import TokenMix

        return TokenMix(self.input, self.output)


class ConstraintsSettings(_Strict):
    min_quality: Fraction = 0.0
    max_p95_latency_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    allowed_providers: tuple[Label, ...] | None = None  # None: any provider

    def to_model(self) -> Constraints:
        from aifinops.model.routing import Constraints

        allowed = frozenset(self.allowed_providers) if self.allowed_providers is not None else None
        return Constraints(self.min_quality, self.max_p95_latency_seconds, allowed)


class PriceOverride(_Strict):
    input_usd_per_million: NonNegative
    output_usd_per_million: NonNegative

    def to_model(self) -> ModelPrice:
        from aifinops.model.routing import ModelPrice

        return ModelPrice(self.input_usd_per_million, self.output_usd_per_million, "config")


class CandidateSettings(_Strict):
    model: Label
    provider: Label
    quality: Fraction  # the team's eval score
    p95_latency_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    price: PriceOverride | None = None

    def to_model(self) -> Candidate:
        from aifinops.model.routing import Candidate

        return Candidate(
            self.model,
            self.provider,
            self.quality,
            self.p95_latency_seconds,
            self.price.to_model() if self.price else None,
        )


class WorkloadSettings(_Strict):
    name: Label
    tenant: Label = GLOBAL_TENANT  # who pays for the workload (for recommendations)
    current_model: Label | None = None
    token_mix: TokenMixSettings = Field(default_factory=TokenMixSettings)
    weights: WeightsSettings = Field(default_factory=WeightsSettings)
    constraints: ConstraintsSettings = Field(default_factory=ConstraintsSettings)
    candidates: tuple[CandidateSettings, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _candidates_consistent(self) -> WorkloadSettings:
        models = [c.model for c in self.candidates]
        _unique(models, "candidate model")
        if self.current_model is not None and self.current_model not in models:
            raise ValueError(
                f"current_model {self.current_model!r} must be one of the candidates "
                f"({', '.join(models)})"
            )
        return self

    def to_model(self) -> Workload:
        from aifinops.model.routing import Workload

        return Workload(
            name=self.name,
            candidates=tuple(c.to_model() for c in self.candidates),
            weights=self.weights.to_model(),
            constraints=self.constraints.to_model(),
            token_mix=self.token_mix.to_model(),
            current_model=self.current_model,
            tenant=self.tenant,
        )


class RoutingSettings(_Strict):
    workloads: tuple[WorkloadSettings, ...] = ()

    @field_validator("workloads")
    @classmethod
    def _unique_names(cls, v: tuple[WorkloadSettings, ...]) -> tuple[WorkloadSettings, ...]:
        _unique([w.name for w in v], "workload name")
        return v

    def to_model(self) -> tuple[Workload, ...]:
        return tuple(w.to_model() for w in self.workloads)


# --- recommendations -----------------------------------------------------------------------


class Toggle(_Strict):
    enabled: bool = True


class GpuSpecSettings(_Strict):
    """A GPU model right-sizing may move to (or from): relative compute on one scale of your
    choice (e.g. A100 = 1.0), memory, and the MIG profiles to consider as slices."""

    name: Label
    compute: float = Field(gt=0, allow_inf_nan=False)
    memory_gb: float = Field(gt=0, allow_inf_nan=False)
    mig_profiles: tuple[Label, ...] = ()

    def to_model(self) -> GpuSpec:
        from aifinops.model.recommend import GpuSpec

        return GpuSpec(self.name, self.compute, self.memory_gb, self.mig_profiles)


class RightsizeSettings(_Strict):
    enabled: bool = True
    headroom: float = Field(0.8, gt=0, le=1, allow_inf_nan=False)
    gpus: tuple[GpuSpecSettings, ...] = ()

    @field_validator("gpus")
    @classmethod
    def _unique_gpus(cls, v: tuple[GpuSpecSettings, ...]) -> tuple[GpuSpecSettings, ...]:
        _unique([g.name for g in v], "GPU model")
        return v


class SpotSettings(_Strict):
    enabled: bool = True
    label_key: Label = "aifinops.io/fault-tolerant"
    label_value: str = "true"


class RecommendationsSettings(_Strict):
    min_saving_usd_per_month: NonNegative = 0.0
    idle_gpu: Toggle = Field(default_factory=Toggle)
    rightsize: RightsizeSettings = Field(default_factory=RightsizeSettings)
    spot: SpotSettings = Field(default_factory=SpotSettings)
    model_switch: Toggle = Field(default_factory=Toggle)
    budget_at_risk: Toggle = Field(default_factory=Toggle)

    def to_model(self) -> RecommendationPolicy:
        from aifinops.model.recommend import RecommendationPolicy

        return RecommendationPolicy(
            min_saving_usd_per_month=self.min_saving_usd_per_month,
            idle_gpu=self.idle_gpu.enabled,
            rightsize=self.rightsize.enabled,
            rightsize_headroom=self.rightsize.headroom,
            spot=self.spot.enabled,
            spot_label_key=self.spot.label_key,
            spot_label_value=self.spot.label_value,
            model_switch=self.model_switch.enabled,
            budget_at_risk=self.budget_at_risk.enabled,
        )

    def gpu_specs(self) -> tuple[GpuSpec, ...]:
        return tuple(g.to_model() for g in self.rightsize.gpus)
