"""Request and response schemas of the JSON API (``/api/v1/...``), strict like the settings.

Requests reject unknown fields; a :class:`pydantic.ValidationError` becomes a 4xx body of the
shape :class:`ErrorResponse` (``{"error": {"code", "message", "field"}}``) through
:func:`error_from_validation`. Responses are built from the pure model's results with the
``from_*`` class methods, so ``/metrics`` and the API read the same figures. Money is USD
(JSON numbers); datetimes are ISO 8601 UTC; ratios are 0–1 (ROI may exceed 1 or be < 0).

Endpoints and their models:

=================================  ======================  =========================
endpoint                           request                 response
=================================  ======================  =========================
``POST /api/v1/roi/calculate``     RoiCalculateRequest     RoiResponse
``POST /api/v1/routing/optimize``  RoutingOptimizeRequest  RoutingResponse
``GET /api/v1/recommendations``    RecommendationsQuery    RecommendationsResponse
``GET /api/v1/chargeback``         ChargebackQuery         ChargebackResponse (json);
                                                           text/csv for csv and focus
``GET /api/v1/summary``            —                       SummaryResponse
``GET /api/v1/budgets``            —                       BudgetsResponse
any error                          —                       ErrorResponse
=================================  ======================  =========================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.json_schema import models_json_schema

from aifinops.model.budgets import BudgetStatus
from aifinops.model.chargeback import Chargeback
from aifinops.model.energy import EnergyReport
from aifinops.model.recommend import Recommendation
from aifinops.model.roi import AiCost, BenefitInputs, InitiativeRoi, RoiResult
from aifinops.model.routing import Candidate, RoutingResult, Workload
from aifinops.settings_finance import (
    BenefitSettings,
    ConstraintsSettings,
    PriceOverride,
    TokenMixSettings,
    WeightsSettings,
)
from aifinops.web.errors import ErrorCode as ErrorCode
from aifinops.web.errors import ErrorDetail as ErrorDetail
from aifinops.web.errors import ErrorResponse as ErrorResponse
from aifinops.web.errors import error_from_validation as error_from_validation

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
RecommendationKindName = Literal["idle_gpu", "rightsize", "spot", "model_switch", "budget_at_risk"]

PERIOD_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# --- ROI -----------------------------------------------------------------------------------


class BenefitsIn(BenefitSettings):
    """Benefit drivers over the whole period; all ≥ 0."""


class AiCostIn(_Schema):
    gpu_usd: NonNegative = 0.0
    tokens_usd: NonNegative = 0.0
    other_usd: NonNegative = 0.0

    def to_model(self) -> AiCost:
        return AiCost(self.gpu_usd, self.tokens_usd, self.other_usd)


class RoiCalculateRequest(_Schema):
    """A what-if. With ``initiative``, its configured benefits, measured cost and period are
    the defaults and any field given here replaces them; without, ``benefits``, ``ai_cost``
    and ``period_days`` describe the whole case (``period_days`` defaults to 30)."""

    # The cross-field rule, stated in the JSON Schema too (clients and fuzzers read it).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["initiative"], "properties": {"initiative": {"type": "string"}}},
                {
                    "required": ["benefits", "ai_cost"],
                    "properties": {"benefits": {"type": "object"}, "ai_cost": {"type": "object"}},
                },
            ]
        }
    )

    initiative: Name | None = None
    benefits: BenefitsIn | None = None
    ai_cost: AiCostIn | None = None
    period_days: float | None = Field(None, gt=0, le=3660, allow_inf_nan=False)

    @model_validator(mode="after")
    def _complete(self) -> RoiCalculateRequest:
        if self.initiative is None and (self.benefits is None or self.ai_cost is None):
            raise ValueError("give 'initiative', or both 'benefits' and 'ai_cost'")
        return self

    def benefit_inputs(self) -> BenefitInputs | None:
        return self.benefits.to_model() if self.benefits else None


class BenefitBreakdownOut(_Schema):
    productivity: float
    quality: float
    risk: float


class AiCostOut(_Schema):
    gpu_usd: float
    tokens_usd: float
    other_usd: float
    total_usd: float


class RoiResponse(_Schema):
    initiative: str | None
    tenants: list[str]
    period_start: AwareDatetime | None
    period_end: AwareDatetime | None
    period_days: float
    realized_fraction: float
    benefits_usd: float
    breakdown: BenefitBreakdownOut
    ai_cost: AiCostOut
    net_benefit_usd: float
    roi_ratio: float | None = Field(description="(benefits - ai_cost) / ai_cost; null if undefined")
    payback_days: float | None
    reasons: list[str]

    @classmethod
    def from_result(cls, result: RoiResult, initiative: InitiativeRoi | None = None) -> RoiResponse:
        c = result.ai_cost
        return cls(
            initiative=initiative.name if initiative else None,
            tenants=list(initiative.tenants) if initiative else [],
            period_start=_utc(initiative.window.start) if initiative else None,
            period_end=_utc(initiative.window.end) if initiative else None,
            period_days=result.period_days,
            realized_fraction=result.realized_fraction,
            benefits_usd=result.benefits_usd,
            breakdown=BenefitBreakdownOut(
                productivity=result.breakdown["productivity"],
                quality=result.breakdown["quality"],
                risk=result.breakdown["risk"],
            ),
            ai_cost=AiCostOut(
                gpu_usd=c.gpu_usd,
                tokens_usd=c.tokens_usd,
                other_usd=c.other_usd,
                total_usd=c.total_usd,
            ),
            net_benefit_usd=result.net_benefit_usd,
            roi_ratio=result.roi_ratio,
            payback_days=result.payback_days,
            reasons=list(result.reasons),
        )


# --- routing -------------------------------------------------------------------------------


class PriceIn(PriceOverride):
    """USD per 1M tokens."""


class WeightsIn(WeightsSettings):
    """Weights of cost, quality and latency; must sum to 1."""


class TokenMixIn(TokenMixSettings):
    """Input and output token shares; must sum to 1."""


class ConstraintsIn(ConstraintsSettings):
    """Hard constraints; a candidate that breaks one is excluded."""


class CandidateIn(_Schema):
    model: Name
    provider: Name
    quality: Fraction
    p95_latency_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    price: PriceIn | None = None

    def to_model(self) -> Candidate:
        return Candidate(
            self.model,
            self.provider,
            self.quality,
            self.p95_latency_seconds,
            self.price.to_model() if self.price else None,
        )


class RoutingOptimizeRequest(_Schema):
    """Rank candidates for a configured ``workload`` (fields given here replace its
    configuration) or for ad-hoc ``candidates``. ``monthly_tokens`` defaults to the workload's
    observed volume (0 for an ad-hoc request)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["workload"], "properties": {"workload": {"type": "string"}}},
                {"required": ["candidates"], "properties": {"candidates": {"type": "array"}}},
            ]
        }
    )

    workload: Name | None = None
    candidates: tuple[CandidateIn, ...] | None = Field(None, min_length=1, max_length=100)
    weights: WeightsIn | None = None
    constraints: ConstraintsIn | None = None
    token_mix: TokenMixIn | None = None
    monthly_tokens: NonNegative | None = None
    current_model: Name | None = None

    @model_validator(mode="after")
    def _target(self) -> RoutingOptimizeRequest:
        if self.workload is None and self.candidates is None:
            raise ValueError("give 'workload' (a configured workload class) or 'candidates'")
        if self.candidates is not None:
            models = [c.model for c in self.candidates]
            if len(set(models)) != len(models):
                raise ValueError("candidate models must be unique")
            if self.current_model is not None and self.current_model not in models:
                raise ValueError(f"current_model {self.current_model!r} is not a candidate")
        return self

    def to_workload(self, base: Workload | None) -> Workload:
        """The workload to optimize: ``base`` (the configured one, or ``None`` for an ad-hoc
        request) with this request's fields applied."""
        candidates = (
            tuple(c.to_model() for c in self.candidates)
            if self.candidates is not None
            else (base.candidates if base else ())
        )
        default = Workload(name=self.workload or "adhoc", candidates=candidates)
        b = base or default
        current = self.current_model if self.current_model is not None else b.current_model
        if current is not None and current not in {c.model for c in candidates}:
            current = None
        return Workload(
            name=b.name,
            candidates=candidates,
            weights=self.weights.to_model() if self.weights else b.weights,
            constraints=self.constraints.to_model() if self.constraints else b.constraints,
            token_mix=self.token_mix.to_model() if self.token_mix else b.token_mix,
            current_model=current,
            tenant=b.tenant,
        )


class ScoredCandidateOut(_Schema):
    rank: int
    model: str
    provider: str
    score: float
    quality: float
    cost_usd_per_million: float
    price_source: str
    p95_latency_seconds: float | None
    latency_source: str | None
    cost_score: float
    quality_score: float
    latency_score: float | None
    monthly_cost_usd: float


class ExcludedCandidateOut(_Schema):
    model: str
    provider: str
    reasons: list[str]


class RoutingResponse(_Schema):
    workload: str
    tenant: str
    recommended: str | None
    current_model: str | None
    monthly_tokens: float
    current_monthly_cost_usd: float | None
    monthly_savings_usd: float | None
    ranked: list[ScoredCandidateOut]
    excluded: list[ExcludedCandidateOut]
    reason: str | None

    @classmethod
    def from_result(cls, r: RoutingResult) -> RoutingResponse:
        return cls(
            workload=r.workload,
            tenant=r.tenant,
            recommended=r.recommended.model if r.recommended else None,
            current_model=r.current_model,
            monthly_tokens=r.monthly_tokens,
            current_monthly_cost_usd=r.current_monthly_cost_usd,
            monthly_savings_usd=r.monthly_savings_usd,
            ranked=[
                ScoredCandidateOut(
                    rank=s.rank,
                    model=s.model,
                    provider=s.provider,
                    score=s.score,
                    quality=s.quality,
                    cost_usd_per_million=s.cost_usd_per_million,
                    price_source=s.price_source,
                    p95_latency_seconds=s.p95_latency_seconds,
                    latency_source=s.latency_source,
                    cost_score=s.cost_score,
                    quality_score=s.quality_score,
                    latency_score=s.latency_score,
                    monthly_cost_usd=s.monthly_cost_usd,
                )
                for s in r.ranked
            ],
            excluded=[
                ExcludedCandidateOut(model=e.model, provider=e.provider, reasons=list(e.reasons))
                for e in r.excluded
            ],
            reason=r.reason,
        )


# --- recommendations -----------------------------------------------------------------------


class RecommendationsQuery(_Schema):
    tenant: Name | None = None
    kind: RecommendationKindName | None = None
    min_saving_usd: NonNegative = 0.0  # USD per month, inclusive


class RecommendationOut(_Schema):
    tenant: str
    kind: RecommendationKindName
    subject: str
    saving_usd_per_month: float
    source_cost_usd_per_month: float
    confidence: Literal["low", "medium", "high"]
    summary: str
    evidence: dict[str, float | str]
    window_seconds: float

    @classmethod
    def from_model(cls, r: Recommendation) -> RecommendationOut:
        return cls(
            tenant=r.tenant,
            kind=r.kind,
            subject=r.subject,
            saving_usd_per_month=r.saving_usd_per_month,
            source_cost_usd_per_month=r.source_cost_usd_per_month,
            confidence=r.confidence,
            summary=r.summary,
            evidence=dict(r.evidence),
            window_seconds=r.window_seconds,
        )


class RecommendationsResponse(_Schema):
    generated_at: AwareDatetime
    count: int
    total_saving_usd_per_month: float
    recommendations: list[RecommendationOut]

    @classmethod
    def from_model(cls, recs: Sequence[Recommendation], now: float) -> RecommendationsResponse:
        return cls(
            generated_at=_utc(now),
            count=len(recs),
            total_saving_usd_per_month=sum(r.saving_usd_per_month for r in recs),
            recommendations=[RecommendationOut.from_model(r) for r in recs],
        )


# --- chargeback ----------------------------------------------------------------------------


class ChargebackQuery(_Schema):
    period: str = Field(pattern=PERIOD_PATTERN, description="calendar month, YYYY-MM")
    format: Literal["json", "csv", "focus"] = "json"
    basis: Literal["allocation", "usage"] = "allocation"
    share_idle: bool = False
    share_unallocated: bool = False


class ChargebackRowOut(_Schema):
    tenant: str
    resource: str
    allocation: Literal["direct", "idle_share", "unallocated_share"]
    amount_usd: float  # rounded to the cent; rows sum to total_usd exactly
    quantity: float | None
    unit: str | None
    # A tenant's GPU row in the month in progress: its GPU dollars' shares by split method
    # (exclusive, mig, per_process, hami, even_split, request_share; docs/shared-gpus.md).
    split_methods: dict[str, float] | None = None


class TenantEnergyOut(_Schema):
    """A tenant's measured GPU electricity in the period (``energy.enabled``; this month only).
    Its dollars are not in ``rows`` / ``total_usd``: a bill adds them."""

    tenant: str
    gpu_energy_kwh: float  # measured by DCGM
    facility_energy_kwh: float  # x energy.pue: what is priced
    energy_cost_usd: float
    carbon_kg_co2e: float


class ChargebackResponse(_Schema):
    period: str
    basis: str
    currency: str
    period_start: AwareDatetime
    period_end: AwareDatetime
    charge_period_start: AwareDatetime  # when the data starts (OpenCost's first set)
    charge_period_end: AwareDatetime
    # "opencost": the books of record (OpenCost's history + the exporter's token and
    # charge-back ledger); "exporter_ledger": only what this process accrued.
    source: Literal["opencost", "exporter_ledger"]
    share_idle: bool
    share_unallocated: bool
    total_usd: float
    rows: list[ChargebackRowOut]
    energy: list[TenantEnergyOut]

    @classmethod
    def from_model(cls, cb: Chargeback) -> ChargebackResponse:
        return cls(
            period=cb.period,
            basis=cb.basis,
            currency=cb.currency,
            period_start=_utc(cb.start),
            period_end=_utc(cb.end),
            charge_period_start=_utc(cb.charge_from),
            charge_period_end=_utc(cb.charge_end),
            source="opencost" if cb.source == "opencost" else "exporter_ledger",
            share_idle=cb.share_idle,
            share_unallocated=cb.share_unallocated,
            total_usd=float(cb.total_usd),
            rows=[
                ChargebackRowOut(
                    tenant=r.tenant,
                    resource=r.resource,
                    allocation=r.allocation,
                    amount_usd=float(r.amount_usd),
                    quantity=r.quantity.value if r.quantity else None,
                    unit=r.quantity.unit if r.quantity else None,
                    split_methods=dict(r.split) if r.split else None,
                )
                for r in cb.rows
            ],
            energy=[
                TenantEnergyOut(
                    tenant=t,
                    gpu_energy_kwh=u.gpu_kwh,
                    facility_energy_kwh=u.facility_kwh,
                    energy_cost_usd=u.usd,
                    carbon_kg_co2e=u.kg_co2e,
                )
                for t, u in sorted(cb.energy.items())
            ],
        )


# --- summary -------------------------------------------------------------------------------


class BudgetOut(_Schema):
    tenant: str
    scope: Literal["all", "gpu", "tokens"]
    budget_usd: float
    spend_usd: float
    used_ratio: float | None
    forecast_usd: float
    forecast_method: Literal["theil_sen", "run_rate", "insufficient"]
    forecast_reason: str
    days_to_exhaustion: float | None
    state: Literal["ok", "warning", "critical", "exceeded"]
    warning: float
    critical: float

    @classmethod
    def from_model(cls, s: BudgetStatus) -> BudgetOut:
        return cls(
            tenant=s.tenant,
            scope=s.scope,
            budget_usd=s.budget_usd,
            spend_usd=s.spend_usd,
            used_ratio=s.used_ratio,
            forecast_usd=s.forecast_usd,
            forecast_method=s.forecast.method,
            forecast_reason=s.forecast.reason,
            days_to_exhaustion=s.days_to_exhaustion,
            state=s.state,
            warning=s.warning,
            critical=s.critical,
        )


class EnergyBudgetOut(_Schema):
    """A tenant's monthly energy budgets (``energy.budgets``) and its electricity this month:
    dollars and kg CO2e (``None`` where that budget is not set)."""

    tenant: str
    energy_budget_usd: float | None
    energy_month_to_date_usd: float
    carbon_budget_kg_co2e: float | None
    carbon_month_to_date_kg_co2e: float

    @classmethod
    def of(cls, e: EnergyReport) -> list[EnergyBudgetOut]:
        return [
            cls(
                tenant=t,
                energy_budget_usd=b.usd,
                energy_month_to_date_usd=e.month_usd.get(t, 0.0),
                carbon_budget_kg_co2e=None if b.grams is None else b.grams / 1000.0,
                carbon_month_to_date_kg_co2e=e.month_grams.get(t, 0.0) / 1000.0,
            )
            for t, b in sorted(e.budgets.items())
        ]


class BudgetsResponse(_Schema):
    """Every evaluated budget, month-to-date spend per tenant, and why a configured budget
    was left out (``notes``). ``energy_budgets``: the electricity and carbon budgets
    (``energy.budgets``; empty when energy is off)."""

    generated_at: AwareDatetime
    currency: Literal["USD"] = "USD"
    time_zone: str
    period: str
    month_start: AwareDatetime
    budgets: list[BudgetOut]
    tenant_month_to_date_usd: dict[str, float]
    notes: list[str]
    energy_budgets: list[EnergyBudgetOut] = []

    @classmethod
    def build(
        cls,
        *,
        now: float,
        time_zone: str,
        period: str,
        month_start: float,
        budgets: Iterable[BudgetStatus],
        tenant_month_to_date: dict[str, float],
        notes: Iterable[str] = (),
        energy: EnergyReport | None = None,
    ) -> BudgetsResponse:
        return cls(
            generated_at=_utc(now),
            time_zone=time_zone,
            period=period,
            month_start=_utc(month_start),
            budgets=[BudgetOut.from_model(b) for b in budgets],
            tenant_month_to_date_usd=dict(sorted(tenant_month_to_date.items())),
            notes=list(notes),
            energy_budgets=EnergyBudgetOut.of(energy) if energy is not None else [],
        )


class RoiSummaryOut(_Schema):
    initiative: str
    roi_ratio: float | None
    benefits_usd: float
    ai_cost_usd: float
    payback_days: float | None
    reasons: list[str]

    @classmethod
    def from_model(cls, i: InitiativeRoi) -> RoiSummaryOut:
        return cls(
            initiative=i.name,
            roi_ratio=i.result.roi_ratio,
            benefits_usd=i.result.benefits_usd,
            ai_cost_usd=i.result.ai_cost.total_usd,
            payback_days=i.result.payback_days,
            reasons=list(i.result.reasons),
        )


class SummaryResponse(_Schema):
    """The executive view. ``forecast_*`` come from the global budget's forecast (or ``None``
    when no global figure is available)."""

    generated_at: AwareDatetime
    currency: Literal["USD"] = "USD"
    spend_month_to_date_usd: float
    forecast_month_end_usd: float | None
    forecast_method: Literal["theil_sen", "run_rate", "insufficient"] | None
    idle_cost_usd_per_hour: float
    potential_savings_usd_per_month: float
    budgets: list[BudgetOut]
    roi: list[RoiSummaryOut]
    top_savings: list[RecommendationOut]

    @classmethod
    def build(
        cls,
        *,
        now: float,
        spend_month_to_date_usd: float,
        idle_cost_usd_per_hour: float,
        budgets: Iterable[BudgetStatus] = (),
        initiatives: Iterable[InitiativeRoi] = (),
        recommendations: Sequence[Recommendation] = (),
        forecast: BudgetStatus | None = None,
        top: int = 5,
    ) -> SummaryResponse:
        """``recommendations`` sorted by saving (as :func:`build_recommendations` returns
        them); the first ``top`` with a positive saving are the top savings."""
        savers = [r for r in recommendations if r.saving_usd_per_month > 0]
        return cls(
            generated_at=_utc(now),
            spend_month_to_date_usd=spend_month_to_date_usd,
            forecast_month_end_usd=forecast.forecast_usd if forecast else None,
            forecast_method=forecast.forecast.method if forecast else None,
            idle_cost_usd_per_hour=idle_cost_usd_per_hour,
            potential_savings_usd_per_month=sum(r.saving_usd_per_month for r in savers),
            budgets=[BudgetOut.from_model(b) for b in budgets],
            roi=[RoiSummaryOut.from_model(i) for i in initiatives],
            top_savings=[RecommendationOut.from_model(r) for r in savers[:top]],
        )


# --- OpenAPI -------------------------------------------------------------------------------

REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    RoiCalculateRequest,
    RoutingOptimizeRequest,
    RecommendationsQuery,
    ChargebackQuery,
)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    RoiResponse,
    RoutingResponse,
    RecommendationsResponse,
    ChargebackResponse,
    SummaryResponse,
    BudgetsResponse,
    ErrorResponse,
)


def openapi_components() -> dict[str, Any]:
    """JSON Schemas of every request and response model, for an OpenAPI document's
    ``components.schemas`` (``$ref``s point at ``#/components/schemas/<Model>``)."""
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "validation") for m in REQUEST_MODELS
    ]
    pairs += [(m, "serialization") for m in RESPONSE_MODELS]
    _, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas
