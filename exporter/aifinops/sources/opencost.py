"""Cost allocation per pod from OpenCost's ``/allocation/compute`` API.

The rate query, once per refresh: the configured window, aggregated by ``namespace,pod``,
accumulated into one set, with OpenCost's ``__idle__`` row included and not shared out (the
model decides how idle cost is shown). :func:`parse_allocation_response` is pure and reads the
JSON that OpenCost's ``AllocationJSON`` (``core/pkg/opencost/allocation_json.go``) writes:

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

The month-to-date query (:class:`OpenCostMonthSource`, every
``budgets.refresh_interval_seconds``): ``window=<start>,<now>`` as an RFC 3339 pair with
``step=1d`` and ``accumulate=false``, which OpenCost answers with one allocation set per
24-hour step from the window start (the last set partial, up to now);
:func:`parse_allocation_sets` keeps the sets apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec

from aifinops.model.forecast import month_bounds
from aifinops.model.inputs import EMPTY_LABELS, Allocation, AllocationSet, DailyAllocationSets
from aifinops.offload import run_cpu
from aifinops.settings import OpenCostSettings
from aifinops.settings_finance import BudgetsSettings
from aifinops.sources.base import SourceError, get_bytes, read_bearer_token
from aifinops.sources.jsonchunks import decode_pieces

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
        # On the CPU worker thread: the loop keeps serving scrapes while 20k rows are built.
        allocations = await run_cpu(parse_allocation_response, body, s.window_hours)
        if not allocations.allocations:
            # OpenCost answers an empty set while it (re)builds its cache after a restart; a
            # cluster with any cost has at least an __idle__ row. Keep the last good data.
            raise SourceError("invalid", "empty answer: no allocations in the window")
        return allocations


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
    rows: dict[str, Allocation] = {}
    typed = _typed_sets(body)
    if typed is not None:
        for typed_set in typed:
            for key, row in _typed_rows(typed_set):
                seen = rows.get(key)
                rows[key] = row if seen is None else _merge(seen, row)
        return AllocationSet(window_hours=window_hours, allocations=tuple(rows.values()))
    for allocation_set in _allocation_sets(body):
        for key, raw in allocation_set.items():
            row = _row(key, raw)
            seen = rows.get(key)
            rows[key] = row if seen is None else _merge(seen, row)
    return AllocationSet(window_hours=window_hours, allocations=tuple(rows.values()))


def _allocation_sets(body: bytes) -> list[dict[str, Any]]:
    """The ``data`` sets of an ``/allocation/compute`` body, in order (``null`` sets are
    empty ones); raises :class:`SourceError` like :func:`parse_allocation_response`."""
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
    out: list[dict[str, Any]] = []
    for allocation_set in sets:
        if allocation_set is None:
            out.append({})
            continue
        if not isinstance(allocation_set, dict):
            raise SourceError("invalid", "an OpenCost allocation set is not an object")
        out.append(allocation_set)
    return out


def _row(key: str, raw: Any) -> Allocation:
    try:
        return _allocation(key, raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SourceError("invalid", f"OpenCost allocation {key[:100]!r}: {exc}") from None


# --- month to date ------------------------------------------------------------------------

DAY_SECONDS = 86400.0

# The month-to-date query: one set per day, not accumulated, idle included and not shared.
# ``window`` is an RFC 3339 pair built per fetch (see :func:`month_query_window`).
MONTH_QUERY: dict[str, str] = {
    "step": "1d",
    "aggregate": "namespace,pod",
    "accumulate": "false",
    "includeIdle": "true",
    "shareIdle": "false",
}


def rfc3339_utc(ts: float) -> str:
    """Unix seconds → ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds, rounded down)."""
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def month_query_window(now: float, tz: str, lookback_days: int) -> tuple[float, float]:
    """``(start, end)`` unix seconds of the month-to-date query at ``now``.

    ``start`` is the calendar month's start in time zone ``tz`` moved back by whole 24-hour
    days until ``lookback_days`` full days before today are covered (so the forecast has a
    trend on the 1st); a set boundary therefore falls exactly on the month start, and the
    month-to-date spend is the sum of the sets from there. Around a DST change the sets
    before the month start are offset by the hour from local midnights (they only feed the
    trend). ``end`` is ``now`` rounded down to the second.
    """
    bounds = month_bounds(now, tz)
    day_of_month = datetime.fromtimestamp(now, ZoneInfo(tz)).day
    extra = max(0, lookback_days - (day_of_month - 1))
    return bounds.start - extra * DAY_SECONDS, float(math.floor(now))


def parse_allocation_sets(
    body: bytes, start: float, end: float, step_seconds: float = DAY_SECONDS
) -> DailyAllocationSets:
    """Parse an ``/allocation/compute`` body asked with ``step`` and ``accumulate=false``:
    one :class:`AllocationSet` per step, in order.

    OpenCost (``QueryAllocation``) builds the sets from the window start in steps of
    ``step``; a set's start is read from its rows' ``window.start`` when present, else it is
    ``start + index × step``. Each set ends one step later or at ``end`` (the last, partial
    day), and its ``window_hours`` is that span. Rows are parsed as
    :func:`parse_allocation_response` parses them; a set with no rows stays (a day with no
    spend is 0, not unknown). Raises :class:`SourceError` like that function.
    """
    out: list[tuple[float, float, AllocationSet]] = []
    typed = _typed_sets(body)
    sets: list[dict[str, Any]] | list[dict[str, _Row]]
    sets = typed if typed is not None else _allocation_sets(body)
    for index, allocation_set in enumerate(sets):
        set_start = _set_start(allocation_set)
        if set_start is None:
            set_start = start + index * step_seconds
        set_end = min(set_start + step_seconds, end)
        if set_end <= set_start:
            continue
        if typed is not None:
            rows = tuple(row for _, row in _typed_rows(allocation_set))
        else:
            rows = tuple(_row(key, raw) for key, raw in allocation_set.items())
        out.append((set_start, set_end, AllocationSet((set_end - set_start) / 3600.0, rows)))
    out.sort(key=lambda s: s[0])
    return DailyAllocationSets(start=start, end=end, sets=tuple(out))


def _set_start(allocation_set: Mapping[str, Any]) -> float | None:
    for raw in allocation_set.values():
        if isinstance(raw, _Row):
            text = raw.window.start if raw.window is not None else None
        else:
            window = raw.get("window") if isinstance(raw, dict) else None
            text = window.get("start") if isinstance(window, dict) else None
        if isinstance(text, str):
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if parsed.tzinfo is None:
                return None
            return parsed.timestamp()
    return None


class OpenCostMonthSource:
    """``GET {url}/allocation/compute`` for the month to date in daily sets (see
    :func:`month_query_window` and :func:`parse_allocation_sets`), named ``opencost_month``.

    The refresh loop runs it at most every ``min_interval_seconds``
    (``budgets.refresh_interval_seconds``): it covers weeks, where the rate query covers an
    hour. ``clock`` gives ``now`` (the demo and the tests pass theirs).
    """

    name = "opencost_month"

    def __init__(
        self,
        settings: OpenCostSettings,
        budgets: BudgetsSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._budgets = budgets
        self._clock = clock
        self.min_interval_seconds = budgets.refresh_interval_seconds

    def query(self, now: float) -> tuple[float, float, dict[str, str]]:
        """``(start, end, params)`` of the request at ``now``; configured ``params`` (e.g. a
        filter) are kept, the month query's own parameters win."""
        b = self._budgets
        start, end = month_query_window(now, b.time_zone, b.lookback_days)
        params = {
            **self._settings.params,
            **MONTH_QUERY,
            "window": f"{rfc3339_utc(start)},{rfc3339_utc(end)}",
        }
        return start, end, params

    async def fetch(self, client: httpx.AsyncClient) -> DailyAllocationSets:
        s = self._settings
        if not s.url:
            raise SourceError("invalid", "the opencost source has no url")
        start, end, params = self.query(self._clock())
        body = await get_bytes(
            client,
            f"{s.url.rstrip('/')}/allocation/compute",
            timeout=month_timeout(s),
            max_bytes=s.max_response_bytes,
            params=params,
            headers=read_bearer_token(s.bearer_token_file),
        )
        return await run_cpu(parse_allocation_sets, body, start, end)


def month_timeout(s: OpenCostSettings) -> float:
    """The month query covers weeks of daily sets: three times the rate query's timeout
    (at most 300 s)."""
    return min(300.0, 3.0 * s.timeout_seconds)


# --- the fast path: typed decoding ---------------------------------------------------------
# msgspec decodes straight into these (unknown fields are skipped without building objects):
# on the 10k-GPU answer (44 MB, 20k rows) about 6x faster than json.loads + dict walking, and
# it never holds the whole document as Python dicts. Any body these types do not fit (a
# string where a number belongs, NaN literals, a code other than 200, ...) goes through the
# stdlib path below instead, which gives the same result or the same error as before.


class _Gpu(msgspec.Struct, gc=False):
    gpuRequestAverage: float | None = None
    gpuUsageAverage: float | None = None


class _Props(msgspec.Struct, gc=False):
    namespace: str | None = None
    pod: str | None = None
    node: str | None = None
    labels: dict[str, str] | None = None
    namespaceLabels: dict[str, str] | None = None


class _Window(msgspec.Struct, gc=False):
    start: str | None = None


class _Row(msgspec.Struct, gc=False):
    properties: _Props | None = None
    window: _Window | None = None
    minutes: float | None = None
    gpuHours: float | None = None
    gpuCount: float | None = None
    gpuRequestAverage: float | None = None
    gpuUsageAverage: float | None = None
    gpuAllocation: _Gpu | None = None
    cpuCost: float | None = None
    cpuCostAdjustment: float | None = None
    gpuCost: float | None = None
    gpuCostAdjustment: float | None = None
    ramCost: float | None = None
    ramCostAdjustment: float | None = None
    pvCost: float | None = None
    pvCostAdjustment: float | None = None
    networkCost: float | None = None
    networkCostAdjustment: float | None = None
    loadBalancerCost: float | None = None
    loadBalancerCostAdjustment: float | None = None
    sharedCost: float | None = None
    externalCost: float | None = None


class _Doc(msgspec.Struct, gc=False):
    code: Any = None
    data: list[dict[str, _Row] | None] | None = None


_decode_doc = msgspec.json.Decoder(_Doc).decode
_decode_rows = msgspec.json.Decoder(dict[str, _Row]).decode
_NO_PROPS = _Props()
_NO_GPU = _Gpu()
# OpenCost's compact answer with one accumulated set, as Go's encoding/json writes it.
_ONE_SET_PREFIX = b'{"code":200,"status":"success","data":[{'
_ONE_SET_SUFFIX = b"}]}"
# Every allocation object OpenCost writes starts with its "name" field.
_ROW_START = b'":{"name":"'


def _row_cut(body: bytes, at: int, end: int) -> int:
    """The comma before the allocation key of the first row starting at or after ``at``."""
    marker = body.find(_ROW_START, at, end)
    if marker == -1:
        return -1
    # A key holds no unescaped quote, so the last ',"' before the marker opens this key.
    return body.rfind(b',"', at, marker)


def _typed_sets(body: bytes) -> list[dict[str, _Row]] | None:
    """The allocation sets of a well-formed ``code: 200`` body; ``None`` for anything else
    (and always when :data:`_POSITIONAL` is false).

    A one-set answer is decoded in pieces of about 1 MB (see :mod:`.jsonchunks`), so that a
    scrape waits for one piece, not for the whole 44 MB of a 10k-GPU cluster."""
    if not _POSITIONAL:
        return None
    pieces = decode_pieces(
        body, _ONE_SET_PREFIX, _ONE_SET_SUFFIX, _row_cut, _decode_rows, (b"{", b"}")
    )
    if pieces is not None:
        merged: dict[str, _Row] = {}
        for piece in pieces:
            merged.update(piece)
        return [merged]
    try:
        doc = _decode_doc(body)
    # ValidationError, DecodeError, and UnicodeDecodeError for a string with invalid UTF-8
    # (msgspec raises it as is; found by tests/fuzz): all ValueErrors.
    except ValueError:
        return None
    if doc.code != 200:
        return None
    return [s if s is not None else {} for s in doc.data or ()]


def _nn(value: float) -> float:
    return value if 0.0 <= value < math.inf else 0.0


# The fields _typed_rows fills, in order: rows are built positionally (a frozen dataclass
# with 18 keyword arguments costs about 6 µs a row, positional about 3.5). Should Allocation
# ever declare other fields or another order, the fast path is off and the stdlib path runs.
_ROW_FIELDS = (
    "name",
    "namespace",
    "pod",
    "node",
    "minutes",
    "cpu_cost",
    "gpu_cost",
    "ram_cost",
    "pv_cost",
    "network_cost",
    "load_balancer_cost",
    "shared_cost",
    "external_cost",
    "gpu_hours",
    "gpu_count",
    "gpu_usage_average",
    "labels",
    "namespace_labels",
)
_POSITIONAL = tuple(f.name for f in dataclasses.fields(Allocation)) == _ROW_FIELDS


def _typed_rows(allocation_set: dict[str, _Row]) -> list[tuple[str, Allocation]]:
    """:func:`_allocation` for typed rows (the same fields, defaults and clamps)."""
    out: list[tuple[str, Allocation]] = []
    append = out.append
    for key, r in allocation_set.items():
        p = r.properties or _NO_PROPS
        g = r.gpuAllocation or _NO_GPU
        count = g.gpuRequestAverage
        if count is None:
            count = r.gpuRequestAverage
        if count is None:
            count = r.gpuCount or 0.0
        usage = g.gpuUsageAverage
        if usage is None:
            usage = r.gpuUsageAverage
        values = (
            key,
            p.namespace or None,
            p.pod or None,
            p.node or None,
            _nn(r.minutes or 0.0),
            _nn((r.cpuCost or 0.0) + (r.cpuCostAdjustment or 0.0)),
            _nn((r.gpuCost or 0.0) + (r.gpuCostAdjustment or 0.0)),
            _nn((r.ramCost or 0.0) + (r.ramCostAdjustment or 0.0)),
            _nn((r.pvCost or 0.0) + (r.pvCostAdjustment or 0.0)),
            _nn((r.networkCost or 0.0) + (r.networkCostAdjustment or 0.0)),
            _nn((r.loadBalancerCost or 0.0) + (r.loadBalancerCostAdjustment or 0.0)),
            _nn(r.sharedCost or 0.0),
            _nn(r.externalCost or 0.0),
            _nn(r.gpuHours or 0.0),
            _nn(count),
            None if usage is None else _nn(usage),
            p.labels or EMPTY_LABELS,
            p.namespaceLabels or EMPTY_LABELS,
        )
        append((key, Allocation(*values)))
    return out


# --- the reference path: stdlib json ------------------------------------------------------


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
