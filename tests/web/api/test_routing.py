"""Model routing on the full demo (LiteLLM traffic priced from the bundled price list, the
self-hosted model at its measured price), the what-if optimizer, and the model-switch
recommendation."""

from __future__ import annotations

import pytest

from aifinops.demo.llm import SELF_HOSTED_MODEL, bundled_prices
from tests.web.api.conftest import T0
from tests.web.conftest import series

MONTH_SECONDS = 730 * 3600.0


def blended(model: str, mix=(0.75, 0.25)) -> float:
    """USD per 1M tokens of the mix, from the bundled LiteLLM price list."""
    p = bundled_prices()[model]
    return (mix[0] * p["input_cost_per_token"] + mix[1] * p["output_cost_per_token"]) * 1e6


def minmax(value: float, lo: float, hi: float) -> float:
    return 1.0 if hi <= lo else (hi - value) / (hi - lo)


async def test_routing_series_match_a_hand_calculation_and_the_api(full_demo):
    await full_demo.refresh_at(T0 + 60)  # first reading of a scraped counter is a baseline
    page = await full_demo.refresh_at(T0 + 660)

    # support-chat: chatbot sends claude-sonnet-4-5 30 input + 12 output + 6 cached tokens/s
    monthly_tokens = (30 + 12 + 6) * MONTH_SECONDS
    costs = {m: blended(m) for m in ("claude-sonnet-4-5", "gpt-4o", "gpt-4.1-mini")}
    lat = {"claude-sonnet-4-5": 6.0, "gpt-4o": 4.5, "gpt-4.1-mini": 2.5}
    quality = {"claude-sonnet-4-5": 0.93, "gpt-4o": 0.9, "gpt-4.1-mini": 0.84}
    lo, hi = min(costs.values()), max(costs.values())
    want = {
        m: 0.5 * minmax(costs[m], lo, hi) + 0.3 * quality[m] + 0.2 * minmax(lat[m], 2.5, 6.0)
        for m in costs
    }
    scores = series(page, "aifinops_routing_score", workload="support-chat")
    assert {k[0]: v for k, v in scores.items()} == pytest.approx(want, rel=1e-12)
    # the self-hosted model is below min_quality 0.8: excluded, so absent
    assert (SELF_HOSTED_MODEL,) not in scores
    recommended = series(page, "aifinops_routing_recommended", workload="support-chat")
    assert {k[0] for k, v in recommended.items() if v == 1.0} == {"gpt-4.1-mini"}
    savings = monthly_tokens / 1e6 * (costs["claude-sonnet-4-5"] - costs["gpt-4.1-mini"])
    got = series(page, "aifinops_routing_savings_usd_per_month")
    assert got[("support-chat",)] == pytest.approx(savings, rel=1e-9)
    assert got[("ads-copy",)] == 0.0  # already on the best allowed model

    # the API, asked about the configured workload, answers the same figures
    resp = await full_demo.client.post(
        "/api/v1/routing/optimize", json={"workload": "support-chat"}
    )
    out = await resp.json()
    assert resp.status == 200
    assert out["recommended"] == "gpt-4.1-mini" and out["current_model"] == "claude-sonnet-4-5"
    assert out["monthly_tokens"] == pytest.approx(monthly_tokens, rel=1e-12)
    assert out["monthly_savings_usd"] == got[("support-chat",)]
    assert {c["model"]: c["score"] for c in out["ranked"]} == {k[0]: v for k, v in scores.items()}
    assert [c["rank"] for c in out["ranked"]] == [1, 2, 3]
    (excluded,) = out["excluded"]
    assert excluded["model"] == SELF_HOSTED_MODEL
    assert excluded["reasons"] == ["quality 0.74 is below min_quality 0.8"]

    # search-answers includes the self-hosted model at its measured price
    out = await (
        await full_demo.client.post("/api/v1/routing/optimize", json={"workload": "search-answers"})
    ).json()
    llama = next(c for c in out["ranked"] if c["model"] == SELF_HOSTED_MODEL)
    assert llama["price_source"] == "measured"
    measured = series(page, "aifinops_model_cost_per_million_tokens_usd", model=SELF_HOSTED_MODEL)
    price_in = next(v for k, v in measured.items() if "input" in k and "measured" in k)
    price_out = next(v for k, v in measured.items() if "output" in k and "measured" in k)
    assert llama["cost_usd_per_million"] == pytest.approx(0.8 * price_in + 0.2 * price_out)

    # the model switch is a recommendation for chatbot worth the same savings
    recs = await (
        await full_demo.client.get("/api/v1/recommendations?kind=model_switch&tenant=chatbot")
    ).json()
    (rec,) = recs["recommendations"]
    assert rec["subject"] == "support-chat"
    assert rec["saving_usd_per_month"] == pytest.approx(savings, rel=1e-9)
    assert rec["evidence"]["recommended_model"] == "gpt-4.1-mini"
    assert rec["window_seconds"] == 600.0 and rec["confidence"] == "low"


async def test_routing_what_if(finance_demo):
    await finance_demo.refresh()
    client = finance_demo.client
    candidates = [
        {
            "model": "a",
            "provider": "x",
            "quality": 0.9,
            "p95_latency_seconds": 1.0,
            "price": {"input_usd_per_million": 1.0, "output_usd_per_million": 2.0},
        },
        {
            "model": "b",
            "provider": "y",
            "quality": 0.95,
            "p95_latency_seconds": 2.0,
            "price": {"input_usd_per_million": 4.0, "output_usd_per_million": 8.0},
        },
    ]
    body = {"candidates": candidates, "monthly_tokens": 10_000_000, "current_model": "b"}
    out = await (await client.post("/api/v1/routing/optimize", json=body)).json()
    # cost 1.25 vs 5.0 per 1M (75/25 mix); default weights 0.5/0.3/0.2
    assert [(c["model"], c["score"]) for c in out["ranked"]] == [
        ("a", pytest.approx(0.5 + 0.3 * 0.9 + 0.2)),
        ("b", pytest.approx(0.3 * 0.95)),
    ]
    assert out["recommended"] == "a"
    assert out["monthly_savings_usd"] == pytest.approx(10 * (5.0 - 1.25))

    # constraints exclude, and say why
    body["constraints"] = {"min_quality": 0.92, "allowed_providers": ["y"]}
    out = await (await client.post("/api/v1/routing/optimize", json=body)).json()
    assert out["recommended"] == "b" and out["monthly_savings_usd"] == 0.0
    assert out["excluded"] == [
        {
            "model": "a",
            "provider": "x",
            "reasons": [
                "provider 'x' is not allowed (allowed: y)",
                "quality 0.9 is below min_quality 0.92",
            ],
        }
    ]

    # weights must sum to 1: a 422 naming the field
    body["weights"] = {"cost": 0.5, "quality": 0.5, "latency": 0.5}
    resp = await client.post("/api/v1/routing/optimize", json=body)
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert err["code"] == "invalid_request" and err["field"] == "weights"
    assert "sum to 1" in err["message"]

    resp = await client.post("/api/v1/routing/optimize", json={"workload": "nope"})
    assert resp.status == 404
    assert (await resp.json())["error"]["field"] == "workload"
