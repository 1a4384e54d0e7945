"""The OpenAPI 3.1 document of the JSON API, built from the pydantic models.

Component schemas come from :func:`aifinops.web.schemas.openapi_components` (JSON Schema
2020-12, which OpenAPI 3.1 uses as is) plus the push API's batch; query parameters are read
from the query models' fields, so the document and the validation cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from aifinops.usage import UsageBatch
from aifinops.version import __version__
from aifinops.web.schemas import ChargebackQuery, RecommendationsQuery, openapi_components

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter cannot be JSON null: keep the non-null branch of ``X | None``."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1:
            out = {k: v for k, v in schema.items() if k != "anyOf"}
            out.update(rest[0])
            return out
    return schema


def _query_parameters(
    model: type[BaseModel],
    rename: dict[str, str] | None = None,
    optional: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ())) - optional
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _non_null(copy.deepcopy(prop))
        description = prop.pop("description", None) or prop.get("title", name)
        prop.pop("title", None)
        if prop.get("default") is None:
            prop.pop("default", None)
        params.append(
            {
                "name": (rename or {}).get(name, name),
                "in": "query",
                "required": name in required,
                "description": description,
                "schema": prop,
            }
        )
    return params


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("ErrorResponse"))}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    text = {
        400: "malformed, unknown or repeated query parameter, or a body that is not JSON",
        401: "no bearer token where one is needed, or an unknown one",
        403: "the token lacks the scope",
        404: "unknown initiative, workload or period",
        413: "body over 1 MiB",
        422: "the body breaks the schema; error.field names the field",
        503: "no report yet (first refresh pending)",
    }
    out = {"200": ok}
    for code in (*codes, 401, 503):
        out[str(code)] = _error(text[code])
    return out


def openapi_document(push_enabled: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``POST /api/v1/usage`` is listed when push is enabled."""
    schemas = dict(openapi_components())
    _, usage = models_json_schema([(UsageBatch, "validation")], ref_template=REF)
    schemas.update(usage.get("$defs", {}))
    schemas["UsageAccepted"] = {
        "type": "object",
        "properties": {"accepted": {"type": "integer"}, "duplicates": {"type": "integer"}},
        "required": ["accepted", "duplicates"],
    }
    schemas["UsageError"] = {
        "type": "object",
        "description": "The push API's own error body (its reasons predate the error model).",
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["error", "message"],
    }
    read: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]
    paths: dict[str, Any] = {
        "/api/v1/summary": {
            "get": {
                "operationId": "getSummary",
                "summary": "Executive figures: spend month to date, forecast, budgets, ROI, "
                "idle cost, top savings",
                "security": read,
                "x-scope": "read",
                "responses": _responses(
                    {"description": "summary", "content": _json_content(_ref("SummaryResponse"))},
                    400,
                ),
            }
        },
        "/api/v1/budgets": {
            "get": {
                "operationId": "getBudgets",
                "summary": "Budgets with spend, used ratio, forecast, days to exhaustion, state",
                "security": read,
                "x-scope": "read",
                "responses": _responses(
                    {"description": "budgets", "content": _json_content(_ref("BudgetsResponse"))},
                    400,
                ),
            }
        },
        "/api/v1/recommendations": {
            "get": {
                "operationId": "getRecommendations",
                "summary": "Savings recommendations, filtered by tenant, kind and minimum "
                "monthly saving (USD)",
                "security": read,
                "x-scope": "read",
                "parameters": _query_parameters(
                    RecommendationsQuery, {"min_saving_usd": "min_saving"}
                ),
                "responses": _responses(
                    {
                        "description": "recommendations, largest saving first",
                        "content": _json_content(_ref("RecommendationsResponse")),
                    },
                    400,
                ),
            }
        },
        "/api/v1/chargeback": {
            "get": {
                "operationId": "getChargeback",
                "summary": "Chargeback per tenant and resource for a calendar month, as JSON, "
                "CSV or a FOCUS 1.2 CSV",
                "security": read,
                "x-scope": "read",
                "parameters": _query_parameters(ChargebackQuery, optional=frozenset({"period"})),
                "responses": _responses(
                    {
                        "description": "chargeback rows (amounts rounded to the cent; rows sum "
                        "to the total exactly)",
                        "content": {
                            **_json_content(_ref("ChargebackResponse")),
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    400,
                    404,
                ),
            }
        },
        "/api/v1/roi/calculate": {
            "post": {
                "operationId": "calculateRoi",
                "summary": "What-if ROI: a configured initiative with replaced inputs, or an "
                "ad-hoc case",
                "security": read,
                "x-scope": "read",
                "requestBody": {
                    "required": True,
                    "content": _json_content(_ref("RoiCalculateRequest")),
                },
                "responses": _responses(
                    {"description": "ROI", "content": _json_content(_ref("RoiResponse"))},
                    400,
                    404,
                    413,
                    422,
                ),
            }
        },
        "/api/v1/routing/optimize": {
            "post": {
                "operationId": "optimizeRouting",
                "summary": "Rank candidate models by weighted cost, quality and latency under "
                "constraints",
                "security": read,
                "x-scope": "read",
                "requestBody": {
                    "required": True,
                    "content": _json_content(_ref("RoutingOptimizeRequest")),
                },
                "responses": _responses(
                    {
                        "description": "ranked and excluded candidates",
                        "content": _json_content(_ref("RoutingResponse")),
                    },
                    400,
                    404,
                    413,
                    422,
                ),
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "security": [{}],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document",
                        "content": _json_content({"type": "object"}),
                    }
                },
            }
        },
    }
    if push_enabled:
        usage_error = {"anyOf": [_ref("UsageError"), _ref("ErrorResponse")]}
        paths["/api/v1/usage"] = {
            "post": {
                "operationId": "pushUsage",
                "summary": "Push token usage counted by an application",
                "security": [{"bearerAuth": []}, {}],
                "x-scope": "write",
                "requestBody": {
                    "required": True,
                    "content": _json_content(_ref("UsageBatch")),
                },
                "responses": {
                    "202": {
                        "description": "batch applied (with state.path: journalled first, "
                        "so it survives a restart or a crash)",
                        "content": _json_content(_ref("UsageAccepted")),
                    },
                    **{
                        str(code): {"description": text, "content": _json_content(usage_error)}
                        for code, text in (
                            (400, "body is not JSON"),
                            (401, "missing or wrong bearer token"),
                            (403, "the token lacks the write scope"),
                            (413, "body or batch too large"),
                            (422, "schema violation, token count or series limit"),
                            (429, "over the push rate limit; retry after Retry-After"),
                            (503, "the push journal cannot be written; nothing added, retry"),
                        )
                    },
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AI FinOps exporter API",
            "version": __version__,
            "description": "Budgets, ROI, model routing, recommendations and chargeback, "
            "computed from the same report as /metrics. Money is USD; ratios are 0-1 (ROI "
            "may exceed 1 or be negative). x-scope names the token scope a route needs when "
            "auth is configured (api: in the exporter configuration).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
