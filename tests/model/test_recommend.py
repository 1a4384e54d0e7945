"""Recommendations: exact savings per kind, confidence rules, and the savings bounds
(property-based)."""

import math
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from aifinops.model.budgets import Budget, evaluate_budget
from aifinops.model.recommend import (
    DAY_SECONDS,
    HOURS_PER_MONTH,
    GpuOption,
    GpuSpec,
    GpuWorkload,
    IdleGpuFinding,
    Recommendation,
    RecommendationPolicy,
    SpotPrice,
    build_recommendations,
    cap_to_spend,
    filter_recommendations,
    gpu_options,
    recommend_budget_risks,
    recommend_idle_gpus,
    recommend_model_switches,
    recommend_rightsizing,
    recommend_spot,
    window_confidence,
)
from aifinops.model.routing import (
    Candidate,
    ModelPrice,
    Weights,
    Workload,
    no_latencies,
    optimize_workload,
)

WEEK = 7 * DAY_SECONDS
OPTIONS = (
    GpuOption("NVIDIA A100-SXM4-80GB", compute=1.0, memory_gb=80, usd_per_hour=4.0),
    GpuOption("NVIDIA A10", compute=0.5, memory_gb=24, usd_per_hour=2.0),
    GpuOption("NVIDIA L4", compute=0.25, memory_gb=24, usd_per_hour=1.0),
)
FT = {"aifinops.io/fault-tolerant": "true"}


def wl(**kw) -> GpuWorkload:
    args = {
        "tenant": "research",
        "workload": "ns/train",
        "gpu_model": "NVIDIA A100-SXM4-80GB",
        "gpus": 1.0,
        "usd_per_hour": 4.0,
        "window_seconds": 2 * DAY_SECONDS,
        "peak_utilization": 0.3,
        "peak_memory_gb": 20.0,
    }
    args.update(kw)
    return GpuWorkload(**args)


def test_window_confidence_rule():
    assert [window_confidence(s) for s in (0, DAY_SECONDS - 1, DAY_SECONDS, WEEK)] == [
        "low",
        "low",
        "medium",
        "high",
    ]


def test_idle_gpu_saving():
    [r] = recommend_idle_gpus([IdleGpuFinding("research", "A100", 2, 8.0, 16.0, 8 * DAY_SECONDS)])
    assert (r.kind, r.saving_usd_per_month, r.source_cost_usd_per_month) == (
        "idle_gpu",
        5840.0,
        11680.0,
    )
    assert r.confidence == "high"
    assert r.evidence["idle_gpus"] == 2


def test_idle_saving_capped_by_its_source():
    [r] = recommend_idle_gpus([IdleGpuFinding("t", "A100", 1, 8.0, 2.0, 60.0)])
    assert r.saving_usd_per_month == r.source_cost_usd_per_month == 2.0 * HOURS_PER_MONTH


def test_rightsize_picks_the_cheapest_fitting_option():
    # Peak 0.3 of an A100 = 0.3 compute; with 0.8 headroom the L4 (0.2) is too small, the
    # A10 (0.4) fits and holds 20 GB: cost 4 -> 4 * 2/4 = 2 USD/h, saving 2 * 730.
    [r] = recommend_rightsizing([wl()], OPTIONS, headroom=0.8)
    assert (r.kind, r.subject, r.saving_usd_per_month) == ("rightsize", "ns/train", 1460.0)
    assert r.source_cost_usd_per_month == 2920.0
    assert r.evidence["option"] == "NVIDIA A10"
    assert r.evidence["new_usd_per_hour"] == 2.0
    assert r.confidence == "medium"


def test_rightsize_memory_and_evidence_rules():
    assert (
        recommend_rightsizing([wl(peak_memory_gb=30.0)], OPTIONS) == []
    )  # only the A100 holds 30 GB
    [r] = recommend_rightsizing([wl(peak_memory_gb=None, peak_utilization=0.1)], OPTIONS)
    assert r.evidence["option"] == "NVIDIA L4"  # 0.1 <= 0.8 * 0.25
    assert r.confidence == "low"  # two days, no memory evidence: one level lower
    assert recommend_rightsizing([wl(peak_utilization=None)], OPTIONS) == []
    assert recommend_rightsizing([wl(gpu_model="unknown")], OPTIONS) == []
    assert recommend_rightsizing([wl(peak_utilization=0.9)], OPTIONS) == []


def test_gpu_options_expand_mig_profiles():
    opts = gpu_options(
        [GpuSpec("NVIDIA A100-SXM4-80GB", 1.0, 80, ("3g.40gb",)), GpuSpec("Unpriced", 1, 1)],
        lambda name: 7.0 if "A100" in name else None,
    )
    assert [o.name for o in opts] == ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB MIG 3g.40gb"]
    mig = opts[1]
    assert (mig.memory_gb, mig.compute) == (40.0, 3 / 7)
    assert math.isclose(mig.usd_per_hour, 3.0)


def test_spot_for_labelled_on_demand_workloads():
    prices = {"NVIDIA A100-SXM4-80GB": SpotPrice(4.0, 1.0)}.get
    [r] = recommend_spot([wl(labels=FT, window_seconds=8 * DAY_SECONDS)], prices)
    assert (r.kind, r.saving_usd_per_month) == ("spot", 4.0 * 0.75 * 730)  # 2190
    assert r.evidence["discount_ratio"] == 0.75
    assert r.confidence == "medium"  # capped: interruptions are not measured
    assert recommend_spot([wl()], prices) == []  # not labelled
    assert recommend_spot([wl(labels=FT, purchase_option="spot")], prices) == []
    assert recommend_spot([wl(labels=FT)], {"NVIDIA A100-SXM4-80GB": SpotPrice(1.0, 1.0)}.get) == []


def routing_result(current: str = "big"):
    cands = (
        Candidate("big", "openai", 0.875, 2.5, ModelPrice(4.0, 12.0)),
        Candidate("small", "self-hosted", 0.5, 0.5, ModelPrice(2.0, 2.0)),
    )
    w = Workload("chat", cands, Weights(0.5, 0.25, 0.25), current_model=current, tenant="support")
    return optimize_workload(w, lambda m, p: None, no_latencies, 10_000_000.0)


def test_model_switch_from_routing():
    [r] = recommend_model_switches([routing_result()], window_seconds=8 * DAY_SECONDS)
    assert (r.tenant, r.kind, r.subject) == ("support", "model_switch", "chat")
    assert (r.saving_usd_per_month, r.source_cost_usd_per_month) == (40.0, 60.0)
    assert r.confidence == "medium"  # a week of volume, but a lower-quality model
    assert recommend_model_switches([routing_result("small")], WEEK) == []


def test_budget_at_risk_is_a_zero_saving_warning():
    day0 = datetime(2024, 2, 1, tzinfo=UTC).timestamp()
    series = [(day0 + i * DAY_SECONDS, v) for i, v in enumerate([12.0, 14.0, 16.0, 18.0])]
    status = evaluate_budget(
        Budget("research", 1000.0), 60.0, series, day0 + 4 * DAY_SECONDS, "UTC"
    )
    [r] = recommend_budget_risks([status])
    assert (r.kind, r.saving_usd_per_month, r.confidence) == ("budget_at_risk", 0.0, "medium")
    assert r.evidence["forecast_usd"] == 1160.0
    assert r.evidence["days_to_exhaustion"] == status.days_to_exhaustion
    safe = evaluate_budget(Budget("research", 2000.0), 60.0, series, day0 + 4 * DAY_SECONDS, "UTC")
    assert recommend_budget_risks([safe]) == []


def test_cap_scales_a_tenants_savings_to_its_spend():
    recs = [
        Recommendation("a", "idle_gpu", "A100", 600.0, 600.0, "high", ""),
        Recommendation("a", "spot", "w", 200.0, 800.0, "medium", ""),
        Recommendation("b", "spot", "w", 50.0, 100.0, "medium", ""),
    ]
    out = cap_to_spend(recs, {"a": 400.0, "b": 1000.0})
    assert [r.saving_usd_per_month for r in out] == [300.0, 100.0, 50.0]
    assert out[0].evidence["scaled_by"] == 0.5
    assert "scaled_by" not in out[2].evidence
    assert [r.saving_usd_per_month for r in cap_to_spend(recs, {})] == [0.0, 0.0, 0.0]


def test_build_filters_sorts_and_keeps_budget_warnings():
    recs = build_recommendations(
        RecommendationPolicy(min_saving_usd_per_month=100.0),
        {"research": 10_000.0, "support": 10_000.0},
        idle=[IdleGpuFinding("research", "A100", 2, 8.0, 16.0, WEEK)],
        workloads=[wl(labels=FT)],
        options=OPTIONS,
        spot_prices={"NVIDIA A100-SXM4-80GB": SpotPrice(4.0, 1.0)}.get,
        routing=[routing_result()],  # 40 USD: below the minimum
        routing_window_seconds=WEEK,
    )
    assert [(r.kind, r.saving_usd_per_month) for r in recs] == [
        ("idle_gpu", 5840.0),
        ("spot", 2190.0),
        ("rightsize", 1460.0),
    ]
    assert filter_recommendations(recs, kind="spot")[0].kind == "spot"
    assert filter_recommendations(recs, tenant="nobody") == ()
    assert len(filter_recommendations(recs, min_saving_usd_per_month=2190.0)) == 2


# --- invariants ---------------------------------------------------------------------------

money = st.floats(0.0, 1e5, allow_nan=False)
tenants = st.sampled_from(["a", "b", "c"])
idle_findings = st.builds(
    IdleGpuFinding,
    tenant=tenants,
    gpu_model=st.just("A100"),
    idle_gpus=st.floats(0, 8),
    idle_usd_per_hour=money,
    gpu_usd_per_hour=money,
    idle_for_seconds=st.floats(0, 30 * DAY_SECONDS),
)
gpu_workloads = st.builds(
    GpuWorkload,
    tenant=tenants,
    workload=st.sampled_from(["w1", "w2"]),
    gpu_model=st.sampled_from([o.name for o in OPTIONS]),
    gpus=st.floats(0.1, 8),
    usd_per_hour=money,
    window_seconds=st.floats(0, 30 * DAY_SECONDS),
    peak_utilization=st.none() | st.floats(0, 1),
    peak_memory_gb=st.none() | st.floats(0, 100),
    labels=st.just(FT) | st.just({}),
)
spot_pairs = st.builds(SpotPrice, money, money)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(idle_findings, max_size=6),
    st.lists(gpu_workloads, max_size=6),
    spot_pairs,
    st.dictionaries(tenants, st.floats(0.0, 1e6)),
)
def test_savings_bounded_by_source_and_tenant_spend(idle, workloads, spot, spend):
    recs = build_recommendations(
        RecommendationPolicy(),
        spend,
        idle=idle,
        workloads=workloads,
        options=OPTIONS,
        spot_prices=lambda _: spot,
        routing=[routing_result()],
        routing_window_seconds=WEEK,
    )
    for r in recs:
        assert 0.0 <= r.saving_usd_per_month <= r.source_cost_usd_per_month
    for t in {r.tenant for r in recs}:
        total = math.fsum(r.saving_usd_per_month for r in recs if r.tenant == t)
        assert total <= spend.get(t, 0.0)


@given(st.lists(st.floats(0.0, 1e9), min_size=1, max_size=20), st.floats(0.0, 1e9))
def test_cap_never_exceeds_spend(savings, spend):
    recs = [Recommendation("t", "spot", str(i), s, s, "low", "") for i, s in enumerate(savings)]
    out = cap_to_spend(recs, {"t": spend})
    if math.fsum(savings) <= spend:
        assert out == tuple(recs)
    else:
        assert math.fsum(r.saving_usd_per_month for r in out) <= spend
        assert all(
            o.saving_usd_per_month <= r.saving_usd_per_month for o, r in zip(out, recs, strict=True)
        )
