"""API schemas: strict requests, the error shape, conversions from the model, OpenAPI."""

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from aifinops.model.budgets import Budget, evaluate_budget
from aifinops.model.chargeback import build_chargeback
from aifinops.model.recommend import Recommendation
from aifinops.model.roi import (
    AiCost,
    BenefitInputs,
    Initiative,
    compute_roi,
    evaluate_initiative,
    initiative_window,
)
from aifinops.model.routing import (
    Candidate,
    ModelPrice,
    Workload,
    no_latencies,
    no_prices,
    optimize_workload,
)
from aifinops.web.schemas import (
    ChargebackQuery,
    ChargebackResponse,
    ErrorResponse,
    RecommendationsQuery,
    RecommendationsResponse,
    RoiCalculateRequest,
    RoiResponse,
    RoutingOptimizeRequest,
    RoutingResponse,
    SummaryResponse,
    error_from_validation,
    openapi_components,
)

NOW = datetime(2024, 2, 5, tzinfo=UTC).timestamp()


def error_of(model, data) -> dict:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return error_from_validation(err.value).model_dump()


def test_error_shape_names_the_field():
    assert error_of(RoiCalculateRequest, {"benefits": {"hours_saved": -1}, "ai_cost": {}}) == {
        "error": {
            "code": "invalid_request",
            "message": "Input should be greater than or equal to 0",
            "field": "benefits.hours_saved",
        }
    }
    assert error_of(ChargebackQuery, {"period": "2024-02", "colour": "red"})["error"] == {
        "code": "invalid_request",
        "message": "unknown field",
        "field": "colour",
    }
    whole = error_of(RoiCalculateRequest, {})["error"]
    assert whole["field"] is None and "initiative" in whole["message"]
    assert ErrorResponse.of("not_found", "no such initiative").model_dump() == {
        "error": {"code": "not_found", "message": "no such initiative", "field": None}
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"period": "2024-13"}, "period"),
        ({"period": "2024-02", "format": "xml"}, "format"),
        ({"period": "2024-02", "basis": "list"}, "basis"),
        ({}, "period"),
    ],
)
def test_chargeback_query_rejects(data, field):
    assert error_of(ChargebackQuery, data)["error"]["field"] == field


def test_query_strings_coerce():
    q = ChargebackQuery.model_validate(
        {"period": "2024-02", "format": "focus", "share_idle": "true"}
    )
    assert (q.format, q.share_idle, q.share_unallocated) == ("focus", True, False)
    r = RecommendationsQuery.model_validate({"kind": "spot", "min_saving_usd": "12.5"})
    assert (r.kind, r.min_saving_usd, r.tenant) == ("spot", 12.5, None)
    assert error_of(RecommendationsQuery, {"kind": "magic"})["error"]["field"] == "kind"


def test_routing_request_validation_and_merge():
    assert "workload" in error_of(RoutingOptimizeRequest, {})["error"]["message"]
    bad_weights = {"workload": "w", "weights": {"cost": 0.9, "quality": 0.9, "latency": 0}}
    assert error_of(RoutingOptimizeRequest, bad_weights)["error"]["field"] == "weights"
    req = RoutingOptimizeRequest.model_validate(
        {
            "workload": "chat",
            "weights": {"cost": 1, "quality": 0, "latency": 0},
            "token_mix": {"input": 0.5, "output": 0.5},
        }
    )
    base = Workload("chat", (Candidate("a", "p", 0.5, 1.0),), current_model="a", tenant="support")
    merged = req.to_workload(base)
    assert (merged.weights.cost, merged.token_mix.input, merged.current_model, merged.tenant) == (
        1.0,
        0.5,
        "a",
        "support",
    )
    adhoc = RoutingOptimizeRequest.model_validate(
        {
            "candidates": [
                {
                    "model": "x",
                    "provider": "p",
                    "quality": 0.5,
                    "price": {"input_usd_per_million": 1, "output_usd_per_million": 2},
                }
            ]
        }
    ).to_workload(None)
    assert adhoc.name == "adhoc" and adhoc.candidates[0].price == ModelPrice(1.0, 2.0, "config")
    dup = {
        "candidates": [
            {"model": "x", "provider": "p", "quality": 1},
            {"model": "x", "provider": "q", "quality": 1},
        ]
    }
    assert "unique" in error_of(RoutingOptimizeRequest, dup)["error"]["message"]


def test_roi_response_from_model():
    r = compute_roi(
        BenefitInputs(hours_saved=10, hourly_rate=50, headcount=4), AiCost(gpu_usd=1000), 40.0
    )
    out = RoiResponse.from_result(r).model_dump(mode="json")
    assert out["roi_ratio"] == 1.0 and out["payback_days"] == 20.0
    assert out["breakdown"] == {"productivity": 2000.0, "quality": 0.0, "risk": 0.0}
    init = Initiative("copilot", ("support",), BenefitInputs())
    ev = evaluate_initiative(init, initiative_window(init, NOW, "UTC"), 0.0, 0.0)
    out = RoiResponse.from_result(ev.result, ev).model_dump(mode="json")
    assert out["roi_ratio"] is None and out["reasons"]
    assert out["period_start"] == "2024-02-01T00:00:00Z" and out["tenants"] == ["support"]


def test_routing_and_recommendation_responses():
    w = Workload("chat", (Candidate("a", "p", 0.5, 1.0, ModelPrice(1, 1)),), current_model="a")
    out = RoutingResponse.from_result(
        optimize_workload(w, no_prices, no_latencies, 1e6)
    ).model_dump()
    assert out["recommended"] == "a" and out["monthly_savings_usd"] == 0.0
    rec = Recommendation("t", "spot", "w", 5.0, 10.0, "medium", "s", {"gpus": 1.0}, 60.0)
    resp = RecommendationsResponse.from_model([rec], NOW).model_dump(mode="json")
    assert resp["count"] == 1 and resp["total_saving_usd_per_month"] == 5.0
    assert resp["generated_at"] == "2024-02-05T00:00:00Z"


def test_chargeback_and_summary_responses():
    cb = build_chargeback({("a", "gpu"): 1 / 3, ("b", "gpu"): 2 / 3}, "2024-02", "UTC")
    out = ChargebackResponse.from_model(cb).model_dump(mode="json")
    assert out["total_usd"] == 1.0 and [r["amount_usd"] for r in out["rows"]] == [0.33, 0.67]
    status = evaluate_budget(Budget("a", 100.0), 80.0, [], NOW, "UTC")
    summary = SummaryResponse.build(
        now=NOW,
        spend_month_to_date_usd=80.0,
        idle_cost_usd_per_hour=1.5,
        budgets=[status],
        recommendations=[Recommendation("a", "idle_gpu", "A100", 7.0, 9.0, "high", "s")],
        forecast=status,
    )
    data = json.loads(summary.model_dump_json())
    assert data["budgets"][0]["state"] == "warning"
    assert data["forecast_method"] == "run_rate" and data["potential_savings_usd_per_month"] == 7.0


def test_openapi_components_cover_every_model():
    schemas = openapi_components()
    for name in (
        "RoiCalculateRequest",
        "RoutingResponse",
        "ChargebackQuery",
        "SummaryResponse",
        "ErrorResponse",
    ):
        assert name in schemas
    assert schemas["ChargebackQuery"]["additionalProperties"] is False
    assert "#/components/schemas/" in json.dumps(schemas["RoutingResponse"])
