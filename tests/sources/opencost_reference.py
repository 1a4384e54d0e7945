"""The reference decoder of OpenCost's ``/allocation/compute`` answers: the stdlib ``json``
module and a walk over plain dicts, each field checked by hand. It was the exporter's own
fallback beside the typed msgspec decoder; it lives here as the oracle the one public decoder
(``sources.opencost``) is compared with (tests/sources/test_fast_paths.py), on the
simulator's answers and on hostile ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

from aifinops.model.inputs import EMPTY_LABELS, Allocation, AllocationSet
from aifinops.model.tenancy import MonthAggregation
from aifinops.sources.base import SourceError
from aifinops.sources.opencost import _merge
from aifinops.text import loads_json


def reference_allocations(body: bytes, window_hours: float) -> AllocationSet:
    """``parse_allocation_response`` by the reference decoder: one row per key over all
    sets, a later set's row merged into an earlier one."""
    rows: dict[str, Allocation] = {}
    for allocation_set in _allocation_sets(body):
        for key, raw in allocation_set.items():
            row = _row(key, raw)
            rows[key] = row if key not in rows else _merge(rows[key], row)
    return AllocationSet(window_hours, tuple(rows.values()))


def reference_sets(
    body: bytes, agg: MonthAggregation | None = None
) -> list[tuple[dict[str, Allocation], dict[str, str]]]:
    """Each set's rows by key and its rows' ``window.start`` text, by the reference decoder."""
    return [
        ({key: _row(key, raw, agg) for key, raw in raw_set.items()}, _raw_starts(raw_set))
        for raw_set in _allocation_sets(body)
    ]


def _allocation_sets(body: bytes) -> list[dict[str, Any]]:
    """The ``data`` sets of an ``/allocation/compute`` body, in order (``null`` sets are
    empty ones); raises :class:`SourceError` like :func:`parse_allocation_response`."""
    try:
        doc = loads_json(body)
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
    out: list[dict[str, Any]] = []
    for allocation_set in sets:
        if allocation_set is None:
            out.append({})
            continue
        if not isinstance(allocation_set, dict):
            raise SourceError("invalid", "an OpenCost allocation set is not an object")
        out.append(allocation_set)
    return out


def _row(key: str, raw: Any, agg: MonthAggregation | None = None) -> Allocation:
    try:
        row = _allocation(key, raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SourceError("invalid", f"OpenCost allocation {key[:100]!r}: {exc}") from None
    ident = agg.identity(key) if agg is not None else None
    if ident is None:
        return row
    name, namespace, labels = ident
    return msgspec.structs.replace(
        row, name=name, namespace=namespace, pod=None, node=None, labels=labels
    )


def _raw_starts(raw_set: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, raw in raw_set.items():
        window = raw.get("window") if isinstance(raw, dict) else None
        text = window.get("start") if isinstance(window, dict) else None
        if isinstance(text, str):
            out[key] = text
    return out


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
        cpu_core_hours=_non_negative(_number(raw, "cpuCoreHours")),
        ram_byte_hours=_non_negative(_number(raw, "ramByteHours")),
        pv_byte_hours=_non_negative(_number(raw, "pvByteHours")),
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
    return value if 0.0 < value < math.inf else 0.0


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
