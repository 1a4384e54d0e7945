"""The reference decoder of Prometheus' ``/api/v1/query`` instant vectors: the stdlib
``json`` module and a walk over plain dicts. It was the exporter's own fallback beside the
typed msgspec decoder; it lives here as the oracle the one public decoder
(``sources.promapi.parse_vector``) is compared with (tests/sources/test_fast_paths.py).
"""

from __future__ import annotations

from typing import Any

from aifinops.sources.base import SourceError
from aifinops.text import loads_json


def reference_vector(
    body: bytes, skipped: list[int] | None = None
) -> list[tuple[dict[str, str], float]]:
    """``parse_vector`` by the reference decoder (stdlib ``json``, each field checked by hand)."""
    try:
        doc = loads_json(body)
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
    if skipped is None:
        return [_series(item) for item in result]
    out = []
    for item in result:
        try:
            out.append(_series(item))
        except SourceError:
            skipped[0] += 1
    return out


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
        # Not the element itself: its labels may hold an API key hash or an email address.
        raise SourceError("invalid", "malformed vector element (labels or value of a wrong type)")
    try:
        return metric, float(value[1])
    except ValueError:
        raise SourceError("invalid", f"sample value {value[1][:40]!r} is not a number") from None
