"""Routing: exact scores with and without constraints, exclusions, savings, histogram p95."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aifinops.model.routing import (
    Candidate,
    Constraints,
    ModelPrice,
    TokenMix,
    Weights,
    Workload,
    blended_cost_per_million,
    histogram_quantile,
    no_latencies,
    no_prices,
    optimize_workload,
)

# Blended at 75 % input / 25 % output: big 6.0, mid 3.0, small 2.0 USD per 1M tokens.
PRICES = {
    ("big", "openai"): ModelPrice(4.0, 12.0),
    ("mid", "anthropic"): ModelPrice(2.0, 6.0),
    ("small", "self-hosted"): ModelPrice(2.0, 2.0, "measured"),
}
MEASURED_P95 = {("mid", "anthropic"): 1.5}

CANDIDATES = (
    Candidate("big", "openai", quality=0.875, p95_latency_seconds=2.5),
    Candidate("mid", "anthropic", quality=0.75, p95_latency_seconds=3.0),  # measured wins
    Candidate("small", "self-hosted", quality=0.5, p95_latency_seconds=0.5),
)
WEIGHTS = Weights(cost=0.5, quality=0.25, latency=0.25)
TOKENS = 10_000_000.0


def prices(model: str, provider: str) -> ModelPrice | None:
    return PRICES.get((model, provider))


def latencies(model: str, provider: str) -> float | None:
    return MEASURED_P95.get((model, provider))


def workload(**kw) -> Workload:
    args = {"name": "chat", "candidates": CANDIDATES, "weights": WEIGHTS, "current_model": "big"}
    args.update(kw)
    return Workload(**args)


def test_blended_cost():
    assert blended_cost_per_million(ModelPrice(4.0, 12.0), TokenMix(0.75, 0.25)) == 6.0


def test_ranking_without_constraints():
    r = optimize_workload(workload(), prices, latencies, TOKENS)
    by_model = {s.model: s for s in r.ranked}
    # cost: (6 - c) / (6 - 2); latency: (2.5 - l) / (2.5 - 0.5); quality as is.
    assert [(s.cost_score, s.latency_score) for s in r.ranked] == [
        (1.0, 1.0),
        (0.75, 0.5),
        (0.0, 0.0),
    ]
    assert by_model["small"].score == 0.5 * 1 + 0.25 * 0.5 + 0.25 * 1 == 0.875
    assert by_model["mid"].score == 0.5 * 0.75 + 0.25 * 0.75 + 0.25 * 0.5 == 0.6875
    assert by_model["big"].score == 0.25 * 0.875 == 0.21875
    assert [s.model for s in r.ranked] == ["small", "mid", "big"]
    assert [s.rank for s in r.ranked] == [1, 2, 3]
    assert by_model["mid"].p95_latency_seconds == 1.5
    assert by_model["mid"].latency_source == "measured"
    assert by_model["big"].latency_source == "config"
    assert by_model["small"].price_source == "measured"
    assert r.recommended is not None and r.recommended.model == "small"
    assert r.current_monthly_cost_usd == 60.0  # 10M tokens at 6 USD per 1M
    assert r.recommended.monthly_cost_usd == 20.0
    assert r.monthly_savings_usd == 40.0
    assert r.excluded == ()


def test_min_quality_excludes_and_renormalizes():
    r = optimize_workload(
        workload(constraints=Constraints(min_quality=0.7)), prices, latencies, TOKENS
    )
    assert [(e.model, e.reasons) for e in r.excluded] == [
        ("small", ("quality 0.5 is below min_quality 0.7",))
    ]
    by_model = {s.model: s for s in r.ranked}
    assert by_model["mid"].score == 0.5 + 0.25 * 0.75 + 0.25 == 0.9375
    assert by_model["big"].score == 0.21875
    assert r.recommended is not None and r.recommended.model == "mid"
    assert r.monthly_savings_usd == 30.0


def test_every_broken_constraint_is_a_reason():
    cons = Constraints(
        min_quality=0.8, max_p95_latency_seconds=2.0, allowed_providers=frozenset({"openai"})
    )
    r = optimize_workload(workload(constraints=cons), prices, latencies, TOKENS)
    reasons = {e.model: e.reasons for e in r.excluded}
    assert reasons["big"] == ("p95 latency 2.5s (config) is above max_p95_latency_seconds 2s",)
    assert reasons["mid"] == (
        "provider 'anthropic' is not allowed (allowed: openai)",
        "quality 0.75 is below min_quality 0.8",
    )
    assert len(reasons["small"]) == 2
    assert r.ranked == () and r.recommended is None
    assert r.monthly_savings_usd is None
    assert r.reason == "every candidate is excluded: no recommendation"


def test_missing_price_and_latency_exclude():
    extra = (
        *CANDIDATES,
        Candidate("mystery", "x", 0.99),
        Candidate("nolat", "y", 0.9, price=ModelPrice(1, 1)),
    )
    r = optimize_workload(workload(candidates=extra), prices, latencies, TOKENS)
    reasons = {e.model: e.reasons for e in r.excluded}
    assert reasons["mystery"] == (
        "no p95 latency: none measured and none configured",
        "no price: not in the price list, not measured, no override",
    )
    assert reasons["nolat"] == ("no p95 latency: none measured and none configured",)
    # Without latency weight or constraint, a missing latency is no reason to exclude.
    r2 = optimize_workload(
        workload(candidates=extra, weights=Weights(0.5, 0.5, 0.0)), prices, latencies, TOKENS
    )
    assert "nolat" in {s.model for s in r2.ranked}
    assert all(s.latency_score is None for s in r2.ranked)


def test_price_override_beats_the_lookup():
    cand = (Candidate("big", "openai", 0.875, 2.5, price=ModelPrice(1.0, 1.0)),)
    r = optimize_workload(workload(candidates=cand), prices, latencies, TOKENS)
    assert r.ranked[0].price_source == "config"
    assert r.ranked[0].cost_usd_per_million == 1.0


def test_single_candidate_scores_one_on_cost_and_latency():
    r = optimize_workload(workload(candidates=CANDIDATES[:1]), prices, latencies, TOKENS)
    s = r.ranked[0]
    assert (s.cost_score, s.latency_score, s.score) == (1.0, 1.0, 0.5 + 0.25 * 0.875 + 0.25)
    assert r.monthly_savings_usd == 0.0  # current is the best


def test_savings_never_negative_when_recommended_costs_more():
    r = optimize_workload(
        workload(current_model="small", constraints=Constraints(min_quality=0.7)),
        prices,
        latencies,
        TOKENS,
    )
    assert r.recommended is not None and r.recommended.model == "mid"
    assert r.current_monthly_cost_usd == 20.0
    assert r.monthly_savings_usd == 0.0


def test_no_current_model_or_unpriced_current():
    r = optimize_workload(workload(current_model=None), prices, latencies, TOKENS)
    assert r.monthly_savings_usd is None and "no current_model" in (r.reason or "")
    r = optimize_workload(workload(), no_prices, no_latencies, TOKENS)
    assert r.monthly_savings_usd is None


# --- histogram_quantile -----------------------------------------------------------------

BUCKETS = [(0.5, 16.0), (1.0, 32.0), (2.0, 48.0), (math.inf, 64.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.125, 0.25),  # rank 8 in the first bucket, interpolated from 0
        (0.5, 1.0),  # rank 32 is exactly the le=1 count
        (0.625, 1.5),  # rank 40: 8 of the 16 in (1, 2]
        (0.95, 2.0),  # rank in the +Inf bucket: the highest finite bound
        (0.0, 0.0),
        (1.0, 2.0),
    ],
)
def test_histogram_quantile_matches_promql(q, expected):
    assert histogram_quantile(BUCKETS, q) == expected


def test_histogram_quantile_sorts_merges_and_forces_monotonic():
    shuffled = [(math.inf, 64.0), (1.0, 20.0), (0.5, 16.0), (1.0, 12.0), (2.0, 30.0)]
    # le=1 merged to 32; le=2 (30) forced up to 32: the quantile at rank 40 is in +Inf.
    assert histogram_quantile(shuffled, 0.5) == 1.0
    assert histogram_quantile(shuffled, 0.625) == 2.0


def test_histogram_quantile_negative_first_bound():
    assert histogram_quantile([(-1.0, 10.0), (math.inf, 10.0)], 0.5) == -1.0


@pytest.mark.parametrize(
    "buckets",
    [[], [(math.inf, 5.0)], [(1.0, 5.0), (2.0, 5.0)], [(1.0, 0.0), (math.inf, 0.0)]],
)
def test_histogram_quantile_undefined(buckets):
    assert histogram_quantile(buckets, 0.95) is None


def test_histogram_quantile_rejects_q_out_of_range():
    with pytest.raises(ValueError):
        histogram_quantile(BUCKETS, 1.5)


@given(
    st.lists(st.floats(0.01, 100.0), min_size=1, max_size=8, unique=True),
    st.lists(st.integers(0, 1000), min_size=9, max_size=9),
    st.floats(0.0, 1.0),
)
def test_histogram_quantile_stays_within_the_bounds(bounds, counts, q):
    bounds = sorted(bounds)
    cumulative = [float(sum(counts[: i + 1])) for i in range(len(bounds) + 1)]
    buckets = [*zip(bounds, cumulative, strict=False), (math.inf, cumulative[len(bounds)])]
    value = histogram_quantile(buckets, q)
    if cumulative[len(bounds)] == 0:
        assert value is None
    else:
        assert value is not None and 0.0 <= value <= bounds[-1]


@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 1.0), st.floats(0.0, 100.0), st.floats(0.0, 10.0), st.floats(0.01, 10.0)
        ),
        min_size=1,
        max_size=6,
    ),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_scores_in_unit_interval_and_savings_non_negative(rows, wc, wq):
    wl = max(0.0, 1.0 - wc - wq)
    if wc + wq > 1.0:
        wc, wq, wl = wc / (wc + wq), wq / (wc + wq), 0.0
    cands = tuple(
        Candidate(f"m{i}", "p", quality=q, p95_latency_seconds=lat, price=ModelPrice(pin, pout))
        for i, (q, pin, pout, lat) in enumerate(rows)
    )
    r = optimize_workload(
        Workload("w", cands, Weights(wc, wq, wl), current_model="m0"), no_prices, no_latencies, 1e7
    )
    assert all(0.0 <= s.score <= 1.0 for s in r.ranked)
    assert r.monthly_savings_usd is not None and r.monthly_savings_usd >= 0.0
    assert [s.score for s in r.ranked] == sorted((s.score for s in r.ranked), reverse=True)
