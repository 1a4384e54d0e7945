"""Instant queries against the Prometheus HTTP API (``GET /api/v1/query``).

Fetch and parse are split: :func:`instant_query` does the HTTP call through
:func:`~aifinops.sources.base.get_bytes`, :func:`parse_vector` is pure and is what tests feed
with recorded bodies. Thanos Query and Mimir serve the same API and are read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from aifinops.sources.base import CpuRunner, SourceError, get_bytes
from aifinops.sources.jsonchunks import decode_pieces
from aifinops.text import loads_json


async def instant_query(
    client: httpx.AsyncClient,
    base_url: str,
    promql: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    skipped: list[int] | None = None,
    run: CpuRunner,
) -> list[tuple[dict[str, str], float]]:
    """Evaluate ``promql`` at the server's current time; return its instant vector.

    ``base_url`` is the Prometheus root (``http://prometheus:9090``, with a path prefix if it is
    served under one). ``timeout`` is in seconds, ``max_bytes`` caps the response body.
    Raises :class:`SourceError` for every failure; see :func:`parse_vector` for the result
    and ``skipped``. The answer is parsed by ``run`` (the CPU worker).
    """
    body = await get_bytes(
        client,
        f"{base_url.rstrip('/')}/api/v1/query",
        timeout=timeout,
        max_bytes=max_bytes,
        params={"query": promql},
        headers=headers,
    )
    # On the CPU worker thread: at 10k GPUs the answer is 14k series (a few MB).
    return await run(parse_vector, body, skipped)


# --- the fast path: msgspec, in pieces --------------------------------------------------
# A vector element decoded straight into a struct; any body these types do not fit goes
# through the stdlib path below, which gives the same result or the same error as before.


class _Element(msgspec.Struct, gc=False):
    metric: dict[str, str]
    value: tuple[Any, str]


class _Data(msgspec.Struct, gc=False):
    resultType: str
    result: list[_Element]


class _Answer(msgspec.Struct, gc=False):
    status: str
    data: _Data | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode
_decode_elements = msgspec.json.Decoder(list[_Element]).decode
# Prometheus' compact answer; elements start with their "metric" field.
_VECTOR_PREFIX = b'{"status":"success","data":{"resultType":"vector","result":['
_VECTOR_SUFFIX = b"]}}"
_ELEMENT_START = b',{"metric":'


def _element_cut(body: bytes, at: int, end: int) -> int:
    return body.find(_ELEMENT_START, at, end)


def _typed_vector(body: bytes) -> list[tuple[dict[str, str], float]] | None:
    """The vector of a well-formed success answer, decoded in pieces of about 1 MB when it
    has Prometheus' compact form; ``None`` for anything else."""
    pieces = decode_pieces(
        body, _VECTOR_PREFIX, _VECTOR_SUFFIX, _element_cut, _decode_elements, (b"[", b"]")
    )
    if pieces is not None:
        elements = [e for piece in pieces for e in piece]
    else:
        try:
            answer = _decode_answer(body)
        # DecodeError (ValidationError included), and UnicodeDecodeError: msgspec raises that
        # for a string with invalid UTF-8 (found by tests/fuzz).
        except ValueError:
            return None
        if answer.status != "success" or answer.data is None or answer.data.resultType != "vector":
            return None
        elements = answer.data.result
    try:
        return [(e.metric, float(e.value[1])) for e in elements]
    except ValueError:
        return None


def parse_vector(
    body: bytes, skipped: list[int] | None = None
) -> list[tuple[dict[str, str], float]]:
    """Parse a ``/api/v1/query`` response whose result is an instant vector.

    Expects ``{"status": "success", "data": {"resultType": "vector", "result": [{"metric":
    {...}, "value": [<unix seconds>, "<number>"]}, ...]}}`` and returns one ``(labels, value)``
    pair per series, in the server's order. Values arrive as strings; ``"NaN"``, ``"+Inf"`` and
    ``"-Inf"`` become the float values (the caller decides whether to keep them). An empty
    result is an empty list. ``warnings`` and other extra keys are ignored.

    Raises :class:`SourceError` with reason ``parse`` when the body is not JSON, and
    ``invalid`` when it is JSON of another shape: an error status, a result type other than
    ``vector``, a series without a numeric value or with non-string label values. With
    ``skipped`` (the token sources: one bad series must not hide the others) such a series is
    left out and counted in ``skipped[0]`` instead.
    """
    typed = _typed_vector(body)
    if typed is not None:
        return typed
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
