"""The finance config sections: the documented examples load, bad input names the field."""

from datetime import date

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aifinops.model.roi import DateRange
from aifinops.settings_finance import (
    BudgetsSettings,
    InitiativeList,
    RecommendationsSettings,
    RoutingSettings,
    initiatives_to_model,
)

EXAMPLE = """
budgets:
  time_zone: Europe/Paris
  lookback_days: 28
  tenants:
    - {tenant: __all__, amount_usd: 50000}
    - {tenant: research, amount_usd: 20000, warning: 0.8, critical: 1.0, scope: all}
    - {tenant: support, amount_usd: 3000, scope: tokens, warning: 0.7, critical: 0.9}

initiatives:
  - name: support-copilot
    tenants: [support]
    period: month
    benefits:
      hours_saved: 6          # per agent per month
      hourly_rate: 45
      headcount: 40
      error_reduction_rate: 120   # errors avoided per month
      avg_error_cost: 30
      incidents_prevented: 1
      avg_incident_cost: 5000
    other_infra_cost_usd: 400
  - name: fraud-model
    tenants: [research, risk]
    period: {start: 2024-01-01, end: 2024-03-31}
    benefits: {incidents_prevented: 12, avg_incident_cost: 8000}

routing:
  workloads:
    - name: support-chat
      tenant: support
      current_model: gpt-4o
      token_mix: {input: 0.75, output: 0.25}
      weights: {cost: 0.5, quality: 0.3, latency: 0.2}
      constraints:
        min_quality: 0.8
        max_p95_latency_seconds: 4
        allowed_providers: [openai, anthropic, self-hosted]
      candidates:
        - {model: gpt-4o, provider: openai, quality: 0.92, p95_latency_seconds: 3.1}
        - {model: gpt-4o-mini, provider: openai, quality: 0.85, p95_latency_seconds: 1.6}
        - model: llama-3.1-8b-instruct
          provider: self-hosted
          quality: 0.81
          price: {input_usd_per_million: 0.05, output_usd_per_million: 0.05}

recommendations:
  min_saving_usd_per_month: 10
  idle_gpu: {enabled: true}
  rightsize:
    enabled: true
    headroom: 0.8
    gpus:
      - name: NVIDIA A100-SXM4-80GB
        compute: 1.0
        memory_gb: 80
        mig_profiles: [1g.10gb, 2g.20gb, 3g.40gb]
      - {name: NVIDIA L4, compute: 0.25, memory_gb: 24}
  spot: {enabled: true, label_key: aifinops.io/fault-tolerant, label_value: "true"}
  model_switch: {enabled: true}
  budget_at_risk: {enabled: true}
"""


class FinanceSections(BaseModel):
    """How the lead will add the sections to Settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    budgets: BudgetsSettings = Field(default_factory=BudgetsSettings)
    initiatives: InitiativeList = ()
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    recommendations: RecommendationsSettings = Field(default_factory=RecommendationsSettings)


C1 = "{model: m, provider: p, quality: 1}"


def workload_yaml(extra: str = "", candidates: str = C1) -> str:
    return f"routing: {{workloads: [{{name: w, {extra}candidates: [{candidates}]}}]}}"


def load(text: str) -> FinanceSections:
    return FinanceSections.model_validate(yaml.safe_load(text) or {})


def test_example_loads_and_converts():
    s = load(EXAMPLE)
    budgets = s.budgets.to_model()
    assert [(b.tenant, b.amount_usd, b.scope) for b in budgets] == [
        ("__all__", 50000.0, "all"),
        ("research", 20000.0, "all"),
        ("support", 3000.0, "tokens"),
    ]
    assert s.budgets.global_budget is not None
    inits = initiatives_to_model(s.initiatives)
    assert inits[0].benefits.headcount == 40 and inits[0].period == "month"
    assert inits[1].period == DateRange(date(2024, 1, 1), date(2024, 3, 31))
    [w] = s.routing.to_model()
    assert w.current_model == "gpt-4o" and w.tenant == "support"
    assert w.constraints.allowed_providers == frozenset({"openai", "anthropic", "self-hosted"})
    assert w.candidates[2].price is not None and w.candidates[2].price.source == "config"
    policy = s.recommendations.to_model()
    assert (policy.min_saving_usd_per_month, policy.rightsize_headroom) == (10.0, 0.8)
    assert s.recommendations.gpu_specs()[0].mig_profiles == ("1g.10gb", "2g.20gb", "3g.40gb")


def test_defaults_are_empty_and_valid():
    s = load("")
    assert s.budgets.time_zone == "UTC" and s.budgets.tenants == ()
    assert s.initiatives == () and s.routing.workloads == ()
    assert s.recommendations.to_model().spot


@pytest.mark.parametrize(
    ("yaml_text", "where", "needle"),
    [
        ("budgets: {time_zone: Mars/Olympus}", "budgets.time_zone", "unknown time zone"),
        (
            "budgets: {tenants: [{tenant: a, amount_usd: -1}]}",
            "budgets.tenants.0.amount_usd",
            "greater than or equal to 0",
        ),
        (
            "budgets: {tenants: [{tenant: a, amount_usd: 1, warning: 0.9, critical: 0.8}]}",
            "budgets.tenants.0",
            "warning (0.9) must be <= critical",
        ),
        (
            "budgets: {tenants: [{tenant: a, amount_usd: 1, warning: 0}]}",
            "budgets.tenants.0.warning",
            "greater than 0",
        ),
        (
            "budgets: {tenants: [{tenant: a, amount_usd: 1, critical: 1.2}]}",
            "budgets.tenants.0.critical",
            "less than or equal to 1",
        ),
        (
            "budgets: {tenants: [{tenant: a, amount_usd: 1, scope: cpu}]}",
            "budgets.tenants.0.scope",
            "'all', 'gpu' or 'tokens'",
        ),
        (
            "budgets: {tenants: [{tenant: a, amount_usd: 1}, {tenant: a, amount_usd: 2}]}",
            "budgets.tenants",
            "duplicate budget for tenant 'a'",
        ),
        (
            "budgets: {tenants: [{tenant: a, amount_usd: .inf}]}",
            "budgets.tenants.0.amount_usd",
            "finite",
        ),
        ("budgets: {budget: 1}", "budgets.budget", "Extra inputs"),
        ("initiatives: [{name: x, tenants: []}]", "initiatives.0.tenants", "at least 1"),
        (
            "initiatives: [{name: x, tenants: [a]}, {name: x, tenants: [b]}]",
            "initiatives",
            "duplicate initiative name",
        ),
        (
            "initiatives: [{name: x, tenants: [a], period: {start: 2024-02-01, end: 2024-01-01}}]",
            "initiatives.0.period",
            "before start",
        ),
        (
            "initiatives: [{name: x, tenants: [a], benefits: {hours_saved: -2}}]",
            "initiatives.0.benefits.hours_saved",
            "greater than or equal to 0",
        ),
        (
            "initiatives: [{name: x, tenants: [a], period: quarter}]",
            "initiatives.0.period",
            "'month'",
        ),
        (
            workload_yaml("weights: {cost: 0.5, quality: 0.5, latency: 0.1}, "),
            "routing.workloads.0.weights",
            "must sum to 1",
        ),
        (
            workload_yaml("token_mix: {input: 0.5, output: 0.4}, "),
            "routing.workloads.0.token_mix",
            "must sum to 1",
        ),
        (
            workload_yaml(candidates="{model: m, provider: p, quality: 1.5}"),
            "routing.workloads.0.candidates.0.quality",
            "less than or equal to 1",
        ),
        (
            workload_yaml("current_model: x, "),
            "routing.workloads.0",
            "must be one of the candidates",
        ),
        (
            workload_yaml(candidates=f"{C1}, {{model: m, provider: q, quality: 1}}"),
            "routing.workloads.0",
            "duplicate candidate model",
        ),
        (
            "routing: {workloads: [{name: w, candidates: []}]}",
            "routing.workloads.0.candidates",
            "at least 1",
        ),
        (
            "recommendations: {rightsize: {headroom: 0}}",
            "recommendations.rightsize.headroom",
            "greater than 0",
        ),
        (
            "recommendations: {rightsize: {gpus: [{name: a, compute: 0, memory_gb: 1}]}}",
            "recommendations.rightsize.gpus.0.compute",
            "greater than 0",
        ),
    ],
)
def test_bad_config_names_the_field(yaml_text, where, needle):
    with pytest.raises(ValidationError) as err:
        load(yaml_text)
    first = err.value.errors()[0]
    assert ".".join(str(p) for p in first["loc"]).startswith(where)
    assert needle in str(err.value)


def test_weights_sum_tolerance():
    ok = workload_yaml("weights: {cost: 0.1, quality: 0.2, latency: 0.7}, ")
    assert load(ok).routing.workloads[0].weights.latency == 0.7  # 0.1 + 0.2 + 0.7 != 1.0 in binary
    off = ok.replace("0.7", "0.70000001")
    with pytest.raises(ValidationError, match="must sum to 1"):
        load(off)


def test_sections_are_frozen():
    s = load(EXAMPLE)
    with pytest.raises(ValidationError):
        s.budgets.time_zone = "UTC"  # type: ignore[misc]
