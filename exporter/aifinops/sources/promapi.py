"""Instant queries against the Prometheus HTTP API (``GET /api/v1/query``).

Fetch and parse are split: :func:`instant_query` does the HTTP call through
:func:`~aifinops.sources.base.get_bytes`, :func:`parse_vector` is pure and is what tests feed
with recorded bodies. Thanos Query and Mimir serve the same API and are read the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from aifinops.sources.base import SourceError, get_bytes


async def instant_query(
    client: httpx.AsyncClient,
    base_url: str,
    promql: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
) -> list[tuple[dict[str, str], float]]:
    """Evaluate ``promql`` at the server's current time; return its instant vector.

    ``base_url`` is the Prometheus root (``http://prometheus:9090``, with a path prefix if it is
    served under one). ``timeout`` is in seconds, ``max_bytes`` caps the response body.
    Raises :class:`SourceError` for every failure; see :func:`parse_vector` for the result.
    """
    body = await get_bytes(
        client,
        f"{base_url.rstrip('/')}/api/v1/query",
        timeout=timeout,
        max_bytes=max_bytes,
        params={"query": promql},
        headers=headers,
    )
    return parse_vector(body)


def parse_vector(body: bytes) -> list[tuple[dict[str, str], float]]:
    """Parse a ``/api/v1/query`` response whose result is an instant vector.

    Expects ``{"status": "success", "data": {"resultType": "vector", "result": [{"metric":
    {...}, "value": [<unix seconds>, "<number>"]}, ...]}}`` and returns one ``(labels, value)``
    pair per series, in the server's order. Values arrive as strings; ``"NaN"``, ``"+Inf"`` and
    ``"-Inf"`` become the float values (the caller decides whether to keep them). An empty
    result is an empty list. ``warnings`` and other extra keys are ignored.

    Raises :class:`SourceError` with reason ``parse`` when the body is not JSON, and
    ``invalid`` when it is JSON of another shape: an error status, a result type other than
    ``vector``, a series without a numeric value or with non-string label values.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise SourceError("parse", f"Prometheus API response is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SourceError("invalid", "Prometheus API response is not a JSON object")
    if doc.get("status") != "success":
        detail = f"{doc.get('errorType', '?')}: {doc.get('error', '?')}"
        raise SourceError("invalid", f"Prometheus API status {doc.get('status')!r} ({detail:.200})")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise SourceError("invalid", f"expected an instant vector, got resultType {kind!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise SourceError("invalid", "Prometheus API data.result is not a list")
    return [_series(item) for item in result]


def _series(item: Any) -> tuple[dict[str, str], float]:
    """One ``{"metric": {...}, "value": [ts, "v"]}`` element."""
    if not isinstance(item, dict):
        raise SourceError("invalid", "a vector element is not an object")
    metric = item.get("metric")
    value = item.get("value")
    if (
        not isinstance(metric, dict)
        or not all(type(v) is str for v in metric.values())
        or not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[1], str)
    ):
        raise SourceError("invalid", f"malformed vector element: {str(item)[:200]}")
    try:
        return metric, float(value[1])
    except ValueError:
        raise SourceError("invalid", f"sample value {value[1][:40]!r} is not a number") from None
