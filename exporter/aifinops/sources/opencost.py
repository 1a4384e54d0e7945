"""Cost allocation per pod from OpenCost's ``/allocation/compute`` API.

One request per refresh: the configured window, aggregated by ``namespace,pod``, accumulated
into one set, with OpenCost's ``__idle__`` row included and not shared out (the model decides
how idle cost is shown). :func:`parse_allocation_response` is pure and reads the JSON that
OpenCost's ``AllocationJSON`` (``core/pkg/opencost/allocation_json.go``) writes:

* costs ``cpuCost``, ``gpuCost``, ``ramCost``, ``pvCost``, ``networkCost`` and
  ``loadBalancerCost``, each with its ``*CostAdjustment``; ``sharedCost`` and ``externalCost``
  have none;
* GPU requests: since opencost PR #2963 (2024) they are nested in ``gpuAllocation``
  (``gpuRequestAverage``, ``gpuUsageAverage``, ``isGPUShared``, ``gpuDevice``, ``gpuModel``,
  ``gpuUUID``; the averages may be ``null``), earlier versions put ``gpuRequestAverage`` and
  ``gpuUsageAverage`` at the top level, and ``gpuCount`` is always there;
* ``properties`` (``AllocationProperties``): ``cluster``, ``node``, ``namespace``, ``pod``,
  ``labels``, ``namespaceLabels``, ... with label keys sanitized the Prometheus way;
* numbers that were NaN or ±Inf inside OpenCost are written as ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import httpx

from aifinops.model.inputs import EMPTY_LABELS, Allocation, AllocationSet
from aifinops.settings import OpenCostSettings
from aifinops.sources.base import SourceError, get_bytes, read_bearer_token

# The query every refresh sends; settings.params are added on top and may override these.
ALLOCATION_QUERY: dict[str, str] = {
    "aggregate": "namespace,pod",
    "includeIdle": "true",
    "shareIdle": "false",
    "accumulate": "true",
}


class OpenCostSource:
    """``GET {url}/allocation/compute`` for the configured window; see the module doc."""

    name = "opencost"

    def __init__(self, settings: OpenCostSettings) -> None:
        self._settings = settings

    async def fetch(self, client: httpx.AsyncClient) -> AllocationSet:
        s = self._settings
        if not s.url:
            raise SourceError("invalid", "the opencost source has no url")
        body = await get_bytes(
            client,
            f"{s.url.rstrip('/')}/allocation/compute",
            timeout=s.timeout_seconds,
            max_bytes=s.max_response_bytes,
            params={"window": s.window, **ALLOCATION_QUERY, **s.params},
            # Read on every fetch: Kubernetes rotates projected service-account tokens.
            headers=read_bearer_token(s.bearer_token_file),
        )
        return parse_allocation_response(body, s.window_hours)


def parse_allocation_response(body: bytes, window_hours: float) -> AllocationSet:
    """Parse an ``/allocation/compute`` body into rows over a window of ``window_hours``.

    The body is ``{"code": 200, "data": [{<key>: <allocation>, ...}, ...]}``. ``data`` holds
    one set per step; with ``accumulate=true`` there is one. Several sets are merged by key:
    costs, ``minutes`` and ``gpuHours`` are summed, the GPU request and usage averages are
    weighted by minutes. A ``null`` set or ``data`` is an empty one.

    Per row, each cost is ``*Cost + *CostAdjustment`` in dollars over the window; ``null``
    numbers count as 0 (``gpu_usage_average`` stays ``None``), and a negative or non-finite
    cost or quantity is clamped to 0, because an adjustment can exceed the cost it corrects
    and the model assumes no negative dollars (the count of such clamps is not kept yet).
    Row names are the set's keys (``namespace/pod``, ``__idle__``, ``cluster/__idle__``,
    ``__unallocated__``, ...) and are kept as they are.

    Raises :class:`SourceError` ``parse`` for a body that is not JSON and ``invalid`` for a
    ``code`` other than 200 or JSON of another shape (a number that is a string, labels that
    are not strings, ...).
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise SourceError("parse", f"OpenCost response is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SourceError("invalid", "OpenCost response is not a JSON object")
    if doc.get("code") != 200:
        message = str(doc.get("message", ""))[:200]
        raise SourceError("invalid", f"OpenCost answered code {doc.get('code')!r}: {message}")
    sets = doc.get("data")
    if sets is None:
        sets = []
    if not isinstance(sets, list):
        raise SourceError("invalid", "OpenCost data is not a list of allocation sets")
    rows: dict[str, Allocation] = {}
    for allocation_set in sets:
        if allocation_set is None:
            continue
        if not isinstance(allocation_set, dict):
            raise SourceError("invalid", "an OpenCost allocation set is not an object")
        for key, raw in allocation_set.items():
            try:
                row = _allocation(key, raw)
            except (TypeError, ValueError, OverflowError) as exc:
                raise SourceError("invalid", f"OpenCost allocation {key[:100]!r}: {exc}") from None
            seen = rows.get(key)
            rows[key] = row if seen is None else _merge(seen, row)
    return AllocationSet(window_hours=window_hours, allocations=tuple(rows.values()))


def _allocation(key: str, raw: Any) -> Allocation:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    props = raw.get("properties", {})
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise TypeError("properties is not an object")

    def cost(field: str, adjustment: str | None = None) -> float:
        total = _number(raw, field) + (_number(raw, adjustment) if adjustment else 0.0)
        return _non_negative(total)

    gpu = raw.get("gpuAllocation")
    if gpu is None:
        gpu = {}
    if not isinstance(gpu, dict):
        raise TypeError("gpuAllocation is not an object")
    gpu_count = _optional_number(gpu, "gpuRequestAverage")
    if gpu_count is None:
        gpu_count = _optional_number(raw, "gpuRequestAverage")
    if gpu_count is None:
        gpu_count = _number(raw, "gpuCount")
    gpu_usage = _optional_number(gpu, "gpuUsageAverage")
    if gpu_usage is None:
        gpu_usage = _optional_number(raw, "gpuUsageAverage")
    return Allocation(
        name=key,
        namespace=_text(props, "namespace"),
        pod=_text(props, "pod"),
        node=_text(props, "node"),
        minutes=_non_negative(_number(raw, "minutes")),
        gpu_hours=_non_negative(_number(raw, "gpuHours")),
        gpu_count=_non_negative(gpu_count),
        gpu_usage_average=None if gpu_usage is None else _non_negative(gpu_usage),
        cpu_cost=cost("cpuCost", "cpuCostAdjustment"),
        gpu_cost=cost("gpuCost", "gpuCostAdjustment"),
        ram_cost=cost("ramCost", "ramCostAdjustment"),
        pv_cost=cost("pvCost", "pvCostAdjustment"),
        network_cost=cost("networkCost", "networkCostAdjustment"),
        load_balancer_cost=cost("loadBalancerCost", "loadBalancerCostAdjustment"),
        shared_cost=cost("sharedCost"),
        external_cost=cost("externalCost"),
        labels=_labels(props, "labels"),
        namespace_labels=_labels(props, "namespaceLabels"),
    )


def _merge(a: Allocation, b: Allocation) -> Allocation:
    """Two steps of one key: ``b`` follows ``a`` in time."""
    minutes = a.minutes + b.minutes

    def weighted(x: float, y: float) -> float:
        return (x * a.minutes + y * b.minutes) / minutes if minutes else max(x, y)

    usage = None
    if a.gpu_usage_average is not None or b.gpu_usage_average is not None:
        usage = weighted(a.gpu_usage_average or 0.0, b.gpu_usage_average or 0.0)
    return Allocation(
        name=a.name,
        namespace=b.namespace or a.namespace,
        pod=b.pod or a.pod,
        node=b.node or a.node,
        gpu_count=weighted(a.gpu_count, b.gpu_count),
        gpu_usage_average=usage,
        minutes=minutes,
        gpu_hours=a.gpu_hours + b.gpu_hours,
        cpu_cost=a.cpu_cost + b.cpu_cost,
        gpu_cost=a.gpu_cost + b.gpu_cost,
        ram_cost=a.ram_cost + b.ram_cost,
        pv_cost=a.pv_cost + b.pv_cost,
        network_cost=a.network_cost + b.network_cost,
        load_balancer_cost=a.load_balancer_cost + b.load_balancer_cost,
        shared_cost=a.shared_cost + b.shared_cost,
        external_cost=a.external_cost + b.external_cost,
        labels=b.labels or a.labels,
        namespace_labels=b.namespace_labels or a.namespace_labels,
    )


def _optional_number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):  # bool is an int subclass, and not a number here
        raise TypeError(f"{key} is {type(value).__name__}, not a number")
    return float(value)


def _number(obj: dict[str, Any], key: str) -> float:
    value = _optional_number(obj, key)
    return 0.0 if value is None else value


def _non_negative(value: float) -> float:
    return value if 0.0 <= value < math.inf else 0.0


def _text(props: dict[str, Any], key: str) -> str | None:
    value = props.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"properties.{key} is not a string")
    return value


def _labels(props: dict[str, Any], key: str) -> Mapping[str, str]:
    labels = props.get(key)
    if labels is None:
        return EMPTY_LABELS
    if not isinstance(labels, dict) or not all(type(v) is str for v in labels.values()):
        raise TypeError(f"properties.{key} is not a map of strings")
    return labels or EMPTY_LABELS
