"""Fake dcgm-exporter, Prometheus and OpenCost servers that serve a :class:`SimCluster`.

Each fake is a small aiohttp application on 127.0.0.1 answering in the real upstream's format
at the time its injectable ``clock`` says (``time.time`` by default; tests pass a fixed one).
A shared :class:`FaultSwitch` (``app[FAULTS]``) turns each upstream bad at runtime and counts
the requests it served, so tests drive the exporter through every failure a real network
offers:

=============  =================================================================================
mode           behaviour
=============  =================================================================================
``ok``         the real format, from the sim
``down``       the connection is closed without a response
``unavailable`` HTTP 503 with a short text body
``error500``   HTTP 500 with a short text body
``garbage``    HTTP 200 with an HTML page followed by invalid UTF-8
``truncated``  HTTP 200 with the first half of the real body (valid HTTP, broken payload)
``slow``       the real body after ``seconds`` (woken early when the servers close)
``empty``      a valid but empty answer (empty page, empty vector, no allocations)
``huge``       the real body padded (validly) to at least ``size`` bytes, sent chunked
``absurd``     the real format with impossible numbers: utilization 250 %, negative and NaN
               values, negative costs, ``null`` costs (OpenCost's NaN), a 1e300 total
=============  =================================================================================

A cluster with shared GPUs (``ClusterSpec(shared_gpus=True)``) also has HAMi's scheduler and
monitor pages on the dcgm-exporter fake (``/hami/...``, fault upstream ``hami``).

``start_upstreams`` starts all three on ephemeral ports and returns their URLs;
:meth:`Upstreams.exporter_config` gives the matching exporter configuration mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from aiohttp import web

from aifinops.demo.cluster import (
    SimCluster,
    opencost_duration_hours,
    opencost_round,
    opencost_window_bounds,
    opencost_window_hours,
    rfc3339,
    sanitize_label_key,
)
from aifinops.demo.cluster.opencost import idle_json, pod_charges
from aifinops.demo.hami import HamiGeneration

Clock = Callable[[], float]
FaultMode = Literal[
    "ok",
    "down",
    "unavailable",
    "error500",
    "garbage",
    "truncated",
    "slow",
    "empty",
    "huge",
    "absurd",
]
FAULT_MODES: tuple[str, ...] = get_args(FaultMode)
UpstreamName = Literal["dcgm", "prometheus", "opencost", "hami"]
UPSTREAMS: tuple[str, ...] = get_args(UpstreamName)

DCGM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GARBAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>\n"
    b"\x00\x9f\x92\x96\xff{{{ not a metric"
)


@dataclass(slots=True)
class Fault:
    """The current fault of one upstream: ``seconds`` for ``slow``, ``size`` (bytes) for
    ``huge``."""

    mode: FaultMode = "ok"
    seconds: float = 1.0
    size: int = 1 << 20


class FaultSwitch:
    """Per-upstream fault modes, settable at runtime, and per-upstream request counts.

    ``set("opencost", "slow", seconds=2)`` or ``set("opencost", "slow:2")``;
    ``set("dcgm", "huge:5000000")``; ``reset()`` puts every upstream back to ``ok``.
    """

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        # ``extra`` names more upstreams served through the same switch (the demo's vLLM and
        # LiteLLM fakes: ``demo/llm.py``).
        self._names: tuple[str, ...] = (*UPSTREAMS, *extra)
        self._faults: dict[str, Fault] = {name: Fault() for name in self._names}
        self._requests: dict[str, int] = dict.fromkeys(self._names, 0)
        self._closing = asyncio.Event()

    def set(
        self,
        upstream: str,
        mode: str,
        *,
        seconds: float | None = None,
        size: int | None = None,
    ) -> None:
        """Switch ``upstream`` to ``mode`` (one of :data:`FAULT_MODES`, optionally with a
        ``:value`` suffix for ``slow``/``huge``)."""
        self._check(upstream)
        name, _, arg = mode.partition(":")
        if name not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {FAULT_MODES}")
        fault = Fault(mode=name)  # type: ignore[arg-type]  # checked against FAULT_MODES
        if name == "slow":
            fault.seconds = float(arg) if arg else (seconds if seconds is not None else 1.0)
        if name == "huge":
            fault.size = int(arg) if arg else (size if size is not None else 1 << 20)
        self._faults[upstream] = fault

    def get(self, upstream: str) -> Fault:
        """The current fault of ``upstream``."""
        self._check(upstream)
        return self._faults[upstream]

    def reset(self, upstream: str | None = None) -> None:
        """Back to ``ok`` (one upstream, or all)."""
        for name in [upstream] if upstream is not None else list(self._names):
            self._check(name)
            self._faults[name] = Fault()

    def requests(self, upstream: str) -> int:
        """How many requests ``upstream`` has received (every route, every mode)."""
        self._check(upstream)
        return self._requests[upstream]

    def served(self, upstream: str) -> None:
        """Count one request (called by the fake servers)."""
        self._requests[upstream] += 1

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the servers are closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    def closing(self) -> None:
        """Wake every ``slow`` handler (the servers are shutting down)."""
        self._closing.set()

    def _check(self, upstream: str) -> None:
        if upstream not in self._names:
            raise ValueError(f"unknown upstream {upstream!r}; expected one of {self._names}")


FAULTS: web.AppKey[FaultSwitch] = web.AppKey("aifinops_demo_faults", FaultSwitch)
SIM: web.AppKey[SimCluster] = web.AppKey("aifinops_demo_sim", SimCluster)
CLOCK: web.AppKey[Clock] = web.AppKey("aifinops_demo_clock")


@dataclass(frozen=True, slots=True)
class _Body:
    status: int
    body: bytes
    content_type: str
    kind: Literal["text", "json"] = "json"


Renderer = Callable[[FaultMode], _Body]


async def _serve(request: web.Request, upstream: str, render: Renderer) -> web.StreamResponse:
    """Apply the upstream's current fault around ``render`` (which builds the real answer)."""
    faults = request.app[FAULTS]
    faults.served(upstream)
    fault = faults.get(upstream)
    mode = fault.mode
    if mode == "down":
        if request.transport is not None:
            request.transport.close()
        # The peer is gone; aiohttp discards whatever is returned here.
        return web.Response(status=503)
    if mode == "unavailable":
        return web.Response(status=503, text="upstream unavailable (fault injected)\n")
    if mode == "error500":
        return web.Response(status=500, text="Internal Server Error\n")
    if mode == "slow":
        await faults.sleep(fault.seconds)
    answer = render(mode)
    body = answer.body
    if mode == "garbage":
        return web.Response(status=200, body=GARBAGE, content_type="text/html")
    if mode == "truncated" and answer.status == 200:
        body = body[: len(body) // 2]
    if mode == "huge" and answer.status == 200:
        return await _stream_huge(request, answer, fault.size)
    response = web.Response(status=answer.status, body=body)
    response.headers["Content-Type"] = answer.content_type
    return response


async def _stream_huge(request: web.Request, answer: _Body, size: int) -> web.StreamResponse:
    """The real body padded validly to at least ``size`` bytes, chunked (no Content-Length)."""
    response = web.StreamResponse(status=answer.status)
    response.headers["Content-Type"] = answer.content_type
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(answer.body)
    sent = len(answer.body)
    # Comments are valid exposition lines; JSON allows trailing whitespace.
    line = b"# " + b"x" * 1021 + b"\n" if answer.kind == "text" else b" " * 1023 + b"\n"
    chunk = line * 64
    try:
        while sent < size:
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client hung up at its size cap, as it should
    return response


# ----------------------------------------------------------------------------------------------
# dcgm-exporter
# ----------------------------------------------------------------------------------------------


def _absurd_dcgm(text: str) -> str:
    """Utilization 250 %, −5 % and NaN on the first three GPUs; engine activity 2.5."""
    replacements = {
        "DCGM_FI_DEV_GPU_UTIL": ["250", "-5", "NaN"],
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ["2.500000"],
    }
    out: list[str] = []
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        values = replacements.get(name)
        if values and not line.startswith("#"):
            line = line.rsplit(" ", 1)[0] + " " + values.pop(0)
        out.append(line)
    return "\n".join(out) + "\n"


def dcgm_app(sim: SimCluster, faults: FaultSwitch, clock: Clock = time.time) -> web.Application:
    """Fake dcgm-exporter: ``GET /metrics`` (every node) and ``GET /node/{node}/metrics``."""
    app = _base_app(sim, faults, clock)

    def page(node: str | None) -> Renderer:
        def render(mode: FaultMode) -> _Body:
            if mode == "empty":
                return _Body(200, b"", DCGM_CONTENT_TYPE, "text")
            text = sim.dcgm_exposition(clock(), node=node)
            if mode == "absurd":
                text = _absurd_dcgm(text)
            return _Body(200, text.encode(), DCGM_CONTENT_TYPE, "text")

        return render

    async def metrics(request: web.Request) -> web.StreamResponse:
        return await _serve(request, "dcgm", page(None))

    async def node_metrics(request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        if node not in {n.name for n in sim.nodes if n.gpus}:
            request.app[FAULTS].served("dcgm")
            return web.Response(status=404, text="404 page not found\n")
        return await _serve(request, "dcgm", page(node))

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/node/{node}/metrics", node_metrics)
    if sim.shared is not None:
        _add_hami_routes(app, sim, clock)
    return app


def _add_hami_routes(app: web.Application, sim: SimCluster, clock: Clock) -> None:
    """HAMi's two pages for the cluster's HAMi pool (demo/hami.py), fault upstream ``hami``:
    ``GET /hami/scheduler/metrics`` (hami-scheduler, :9395 in a cluster) and
    ``GET /hami/monitor/{node}/metrics`` (the device plugin's vGPU monitor, :9394 on each
    node). ``?generation=2.8`` answers in v2.8's names, ``&legacy=1`` adds the old names to
    v2.10's (``--legacy-metrics``)."""
    assert sim.shared is not None
    pool = sim.shared.hami

    def options(request: web.Request) -> tuple[HamiGeneration, bool]:
        gen = request.query.get("generation", "2.10")
        return ("2.8" if gen == "2.8" else "2.10"), request.query.get("legacy") == "1"

    def answer(text: Callable[[], str]) -> Renderer:
        def render(mode: FaultMode) -> _Body:
            if mode == "empty":
                return _Body(200, b"", DCGM_CONTENT_TYPE, "text")
            return _Body(200, text().encode(), DCGM_CONTENT_TYPE, "text")

        return render

    async def scheduler(request: web.Request) -> web.StreamResponse:
        gen, legacy = options(request)
        return await _serve(
            request,
            "hami",
            answer(lambda: pool.scheduler_page(clock(), gen, legacy_metrics=legacy)),
        )

    async def monitor(request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        gen, legacy = options(request)
        if node not in {n.name for n in pool.nodes}:
            request.app[FAULTS].served("hami")
            return web.Response(status=404, text="404 page not found\n")
        return await _serve(
            request,
            "hami",
            answer(lambda: pool.monitor_page(node, clock(), gen, legacy_metrics=legacy)),
        )

    app.router.add_get("/hami/scheduler/metrics", scheduler)
    app.router.add_get("/hami/monitor/{node}/metrics", monitor)


# ----------------------------------------------------------------------------------------------
# Prometheus
# ----------------------------------------------------------------------------------------------


def _json_body(status: int, payload: Any) -> _Body:
    return _Body(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json")


def _prom_error(message: str) -> _Body:
    return _json_body(400, {"status": "error", "errorType": "bad_data", "error": message})


def _parse_prom_time(text: str) -> float:
    """Prometheus' ``time`` parameter: unix seconds (float) or RFC 3339."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f'cannot parse "{text}" to a valid timestamp') from None


def _absurd_vector(payload: dict[str, Any]) -> dict[str, Any]:
    result = payload.get("data", {}).get("result", [])
    for sample, value in zip(result, ["250", "-5", "NaN", "+Inf"], strict=False):
        sample["value"][1] = value
    return payload


def prometheus_app(
    sim: SimCluster, faults: FaultSwitch, clock: Clock = time.time
) -> web.Application:
    """Fake Prometheus: ``GET``/``POST /api/v1/query`` (instant query, optional ``time``),
    ``GET /-/ready`` and ``GET /-/healthy``."""
    app = _base_app(sim, faults, clock)

    async def query(request: web.Request) -> web.StreamResponse:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})

        def render(mode: FaultMode) -> _Body:
            if "query" not in params:
                return _prom_error(
                    'invalid parameter "query": 1:1: parse error: no expression found in input'
                )
            at = clock()
            if "time" in params:
                try:
                    at = _parse_prom_time(params["time"])
                except ValueError as exc:
                    return _prom_error(f'invalid parameter "time": {exc}')
            payload = sim.prometheus_vector(at, params["query"])
            if payload["status"] != "success":
                return _json_body(400, payload)
            if mode == "empty":
                payload["data"]["result"] = []
            if mode == "absurd":
                payload = _absurd_vector(payload)
            return _json_body(200, payload)

        return await _serve(request, "prometheus", render)

    async def ready(request: web.Request) -> web.StreamResponse:
        return await _serve(
            request,
            "prometheus",
            lambda mode: _Body(
                200, b"Prometheus Server is Ready.\n", "text/plain; charset=utf-8", "text"
            ),
        )

    async def healthy(request: web.Request) -> web.StreamResponse:
        return await _serve(
            request,
            "prometheus",
            lambda mode: _Body(
                200, b"Prometheus Server is Healthy.\n", "text/plain; charset=utf-8", "text"
            ),
        )

    app.router.add_get("/api/v1/query", query)
    app.router.add_post("/api/v1/query", query)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/healthy", healthy)
    return app


# ----------------------------------------------------------------------------------------------
# OpenCost
# ----------------------------------------------------------------------------------------------


def _opencost_error(message: str) -> _Body:
    # OpenCost answers parameter errors with Go's http.Error: plain text, trailing newline.
    return _Body(400, f"{message}\n".encode(), "text/plain; charset=utf-8", "text")


def _absurd_allocation(payload: dict[str, Any]) -> dict[str, Any]:
    rows = payload["data"][0]
    pods = [k for k in rows if k != "__idle__"]
    edits: list[dict[str, Any]] = [
        {"cpuCost": -12.5, "gpuCost": -3.0, "minutes": -60.0},
        {"gpuCost": None, "ramCost": None, "gpuCount": -1.0},
        {"totalCost": 1e300, "pvCost": 1e300},
    ]
    for key, edit in zip(pods, edits, strict=False):
        rows[key].update(edit)
    return payload


def opencost_app(sim: SimCluster, faults: FaultSwitch, clock: Clock = time.time) -> web.Application:
    """Fake OpenCost: ``GET /allocation/compute`` (and ``/allocation``) honouring ``window``
    (durations, ``today``, ``month``, unix and RFC 3339 pairs), ``aggregate`` (none, or
    ``namespace,pod``, or any of :data:`AGGREGATE_PROPERTIES` and ``label:<name>``, summed as
    :func:`aggregate_allocations` does), ``includeIdle``, ``includeAggregatedMetadata``, and
    ``step`` with ``accumulate=false`` (one set per step from the window start, as OpenCost's
    ``QueryAllocation`` builds them; the last set ends at ``now``); ``GET /healthz``."""
    app = _base_app(sim, faults, clock)
    labels_of = _labels_cache(sim)

    async def allocation(request: web.Request) -> web.StreamResponse:
        params = request.query

        def render(mode: FaultMode) -> _Body:
            now = clock()
            window = params.get("window", "")
            try:
                hours = opencost_window_hours(window, now)
            except ValueError as exc:
                return _opencost_error(f"Invalid 'window' parameter: {exc}")
            include_idle = params.get("includeIdle", "false").lower() == "true"
            metadata = params.get("includeAggregatedMetadata", "false").lower() == "true"
            try:
                by = parse_aggregate(params.get("aggregate", ""))
            except ValueError as exc:
                return _opencost_error(f"Invalid 'aggregate' parameter: {exc}")

            def one_set(end: float, set_hours: float) -> dict[str, Any]:
                if by is None or sorted(by) == ["namespace", "pod"]:
                    agg = "" if by is None else "namespace,pod"
                    rows = sim.opencost_allocation(
                        end, set_hours, aggregate=agg, include_idle=include_idle
                    )["data"][0]
                    return dict(rows)
                lean = lean_allocations(sim, end, set_hours, include_idle, labels_of)
                return aggregate_allocations(lean, by, aggregated_metadata=metadata)

            step = params.get("step")
            stepped = step is not None and params.get("accumulate", "false").lower() != "true"
            if stepped:
                try:
                    step_hours = opencost_duration_hours(step or "")
                except ValueError as exc:
                    return _opencost_error(f"Invalid 'step' parameter: {exc}")
                try:
                    start, end = opencost_window_bounds(window, now)
                except ValueError as exc:
                    return _opencost_error(f"Invalid 'window' parameter: {exc}")
                try:
                    sets = _stepped_sets(start, end, step_hours * 3600.0, one_set)
                except ValueError as exc:
                    return _opencost_error(f"Invalid 'step' parameter: {exc}")
                payload: dict[str, Any] = {"code": 200, "status": "success", "data": sets}
            else:
                payload = {"code": 200, "status": "success", "data": [one_set(now, hours)]}
            if mode == "empty":
                payload["data"] = [{}]
            if mode == "absurd":
                payload = _absurd_allocation(payload)
            return _json_body(200, payload)

        return await _serve(request, "opencost", render)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return await _serve(
            request, "opencost", lambda mode: _Body(200, b"OK", "text/plain; charset=utf-8", "text")
        )

    app.router.add_get("/allocation/compute", allocation)
    app.router.add_get("/allocation", allocation)
    app.router.add_get("/healthz", healthz)
    return app


MAX_STEPS = 400


def _stepped_sets(
    start: float,
    end: float,
    step_seconds: float,
    one_set: Callable[[float, float], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One allocation set per step over ``[start, end)``: set ``i`` covers
    ``[start + i·step, min(start + (i+1)·step, end))`` (``one_set(set end, hours)``)."""
    if (end - start) / step_seconds > MAX_STEPS:
        raise ValueError(f"more than {MAX_STEPS} steps")
    sets: list[dict[str, Any]] = []
    set_start = start
    while set_start < end:
        set_end = min(set_start + step_seconds, end)
        sets.append(one_set(set_end, (set_end - set_start) / 3600.0))
        set_start += step_seconds
    return sets


# --- aggregation, as OpenCost's AllocationSet.AggregateBy does it (idle not shared) ----------

# The properties the fake aggregates by (OpenCost's ParseProperty knows more: service,
# annotation:, deployment, ...); plus ``label:<name>``.
AGGREGATE_PROPERTIES = (
    "cluster",
    "node",
    "namespace",
    "pod",
    "container",
    "controller",
    "controllerKind",
)
UNALLOCATED = "__unallocated__"
GIB_BYTES = float(1 << 30)
# Summed when rows are aggregated (OpenCost's Allocation.Add); the aggregated row's minutes
# span its members' start..end, and gpuCount is gpuHours over that span.
SUMMED_FIELDS = (
    "cpuCost",
    "cpuCostAdjustment",
    "gpuCost",
    "gpuCostAdjustment",
    "gpuHours",
    "cpuCoreHours",
    "ramByteHours",
    "pvByteHours",
    "ramCost",
    "ramCostAdjustment",
    "pvCost",
    "pvCostAdjustment",
    "networkCost",
    "networkCrossZoneCost",
    "networkCrossRegionCost",
    "networkInternetCost",
    "networkCostAdjustment",
    "loadBalancerCost",
    "loadBalancerCostAdjustment",
    "sharedCost",
    "externalCost",
    "totalCost",
)
# The properties OpenCost's AllocationProperties.Intersection keeps when two rows agree.
_SCALAR_PROPERTIES = (
    "cluster",
    "node",
    "container",
    "controller",
    "controllerKind",
    "namespace",
    "pod",
    "providerID",
)


def parse_aggregate(text: str) -> tuple[str, ...] | None:
    """OpenCost's ``aggregate`` parameter: ``None`` when empty (no aggregation: one row per
    container), else the properties in order (duplicates dropped, ``label:`` names
    sanitized as ``ParseProperty`` does). Raises ``ValueError`` for another property."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        return None
    out: list[str] = []
    for part in parts:
        if part.startswith("label:"):
            name = sanitize_label_key(part[len("label:") :].strip())
            if not name:
                raise ValueError(f"invalid allocation property: {part}")
            prop = f"label:{name}"
        else:
            matches = [p for p in AGGREGATE_PROPERTIES if p.lower() == part.lower()]
            if not matches:
                raise ValueError(f"invalid allocation property: {part}")
            prop = matches[0]
        if prop not in out:
            out.append(prop)
    return tuple(out)


def aggregation_key(properties: Mapping[str, Any], by: Sequence[str]) -> str:
    """OpenCost's ``AllocationProperties.GenerateKey``: each property's value joined with
    ``/``; a label's value (its name no longer prefixed since 2023), ``__unallocated__``
    for a label the row lacks or a missing controller kind."""
    names: list[str] = []
    labels = properties.get("labels")
    for prop in by:
        if prop.startswith("label:"):
            value = labels.get(prop[len("label:") :]) if labels is not None else None
            names.append(UNALLOCATED if value is None else str(value))
        elif prop == "controllerKind":
            names.append(str(properties.get(prop) or UNALLOCATED))
        elif prop == "controller" and properties.get("controller"):
            kind = properties.get("controllerKind")
            names.append(f"{kind}:{properties['controller']}" if kind else properties["controller"])
        else:
            names.append(str(properties.get(prop) or ("" if prop != "controller" else UNALLOCATED)))
    return "/".join(names)


def intersect_properties(
    a: Mapping[str, Any], b: Mapping[str, Any], *, aggregated_metadata: bool = False
) -> dict[str, Any]:
    """OpenCost's ``AllocationProperties.Intersection``: every scalar property both agree
    on; when they share the namespace, its ``namespaceLabels``, and with
    ``includeAggregatedMetadata`` the labels both carry with the same value. Labels are
    dropped otherwise, as are ``services``."""
    out: dict[str, Any] = {}
    for prop in _SCALAR_PROPERTIES:
        if prop in a and a.get(prop) == b.get(prop):
            out[prop] = a[prop]
    if "namespace" in out:
        if a.get("namespaceLabels"):
            out["namespaceLabels"] = dict(a["namespaceLabels"])
        if aggregated_metadata:
            la, lb = a.get("labels") or {}, b.get("labels") or {}
            out["labels"] = {k: v for k, v in la.items() if lb.get(k) == v}
    return out


def aggregate_allocations(
    rows: Mapping[str, Mapping[str, Any]],
    by: Sequence[str],
    *,
    aggregated_metadata: bool = False,
) -> dict[str, Any]:
    """Rows of one set aggregated by ``by`` (``shareIdle=false``): each row goes to its
    :func:`aggregation_key`; a key's row keeps its first member's properties intersected
    with every other member's (:func:`intersect_properties`), spans their start..end and
    sums their :data:`SUMMED_FIELDS` (rounded as OpenCost prints them). Idle rows merge into
    one ``__idle__`` row, as OpenCost does without ``splitIdle``. Fields not summed here (the
    averages, efficiencies, PV and load-balancer maps) are left out of aggregated rows."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for key, row in rows.items():
        name = "__idle__" if "__idle__" in key else aggregation_key(row.get("properties") or {}, by)
        members = groups.get(name)
        if members is None:
            groups[name] = [row]
        else:
            members.append(row)
    out: dict[str, Any] = {}
    for name, members in groups.items():
        first = members[0]
        properties = dict(first.get("properties") or {})
        for other in members[1:]:
            properties = intersect_properties(
                properties, other.get("properties") or {}, aggregated_metadata=aggregated_metadata
            )
        start = min(m["start"] for m in members)
        end = max(m["end"] for m in members)
        span = _seconds(end) - _seconds(start)
        hours = max(0.0, span) / 3600.0
        agg: dict[str, Any] = {
            "name": name,
            "properties": properties,
            "window": first.get("window"),
            "start": start,
            "end": end,
            "minutes": opencost_round(hours * 60.0),
        }
        for f in SUMMED_FIELDS:
            if f in first or any(f in m for m in members):
                agg[f] = opencost_round(math.fsum(m.get(f) or 0.0 for m in members))
        agg["gpuCount"] = opencost_round(agg.get("gpuHours", 0.0) / hours) if hours else 0.0
        out[name] = agg
    return out


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


PodFacts = tuple[dict[str, str], dict[str, str], float]
LabelsOf = Callable[[Any], PodFacts]


def _labels_cache(sim: SimCluster) -> LabelsOf:
    """A pod's ``sim.visible_labels`` and GPU count, once per pod (they do not change)."""
    cache: dict[tuple[str, str], PodFacts] = {}

    def labels_of(pod: Any) -> PodFacts:
        key = (pod.namespace, pod.name)
        got = cache.get(key)
        if got is None:
            labels, ns_labels = sim.visible_labels(pod)
            got = (dict(sorted(labels.items())), dict(sorted(ns_labels.items())), pod.gpu_count)
            cache[key] = got
        return got

    return labels_of


def lean_allocations(
    sim: SimCluster,
    now: float,
    window_hours: float,
    include_idle: bool,
    labels_of: LabelsOf | None = None,
) -> dict[str, dict[str, Any]]:
    """The pod rows of ``sim.opencost_allocation(now, window_hours)`` with only what an
    aggregated row keeps (the properties, window, start, end, and :data:`SUMMED_FIELDS`),
    at a third of the cost: the input of :func:`aggregate_allocations` for a month of daily
    sets at 10k GPUs. Every field holds the pod row's value (a test checks it)."""
    labels_of = labels_of or _labels_cache(sim)
    ws = now - window_hours * 3600.0
    window = {"start": rfc3339(ws), "end": rfc3339(now)}
    times: dict[float, str] = {}

    def when(t: float) -> str:
        text = times.get(t)
        if text is None:
            text = times[t] = rfc3339(t)
        return text

    charges = pod_charges(sim, now, window_hours)
    cluster = sim.spec.cluster_name
    r = opencost_round
    rows: dict[str, dict[str, Any]] = {}
    for c in charges:
        pod = c.run.pod
        key = f"{pod.namespace}/{c.run.name}"
        labels, ns_labels, gpus = labels_of(pod)
        rows[key] = {
            "name": key,
            "properties": {
                "cluster": cluster,
                "node": pod.node,
                "namespace": pod.namespace,
                "pod": c.run.name,
                "labels": labels,
                "namespaceLabels": ns_labels,
            },
            "window": window,
            "start": when(c.start),
            "end": when(c.end),
            "cpuCost": c.cpu,
            "cpuCostAdjustment": c.cpu_adj,
            "gpuCost": c.gpu,
            "gpuCostAdjustment": 0.0,
            "gpuHours": r(gpus * c.hours),
            # usage as OpenCost's AllocationJSON writes it (core-hours, byte-hours)
            "cpuCoreHours": r(pod.cpu_cores * c.multiplier * c.hours),
            "ramByteHours": r(pod.ram_bytes * c.multiplier * c.hours),
            "pvByteHours": r(pod.pv_gib * GIB_BYTES * c.multiplier * c.hours),
            "ramCost": c.ram,
            "ramCostAdjustment": c.ram_adj,
            "pvCost": c.pv,
            "pvCostAdjustment": 0.0,
            "networkCost": c.network,
            "networkCrossZoneCost": c.network_zone,
            "networkCrossRegionCost": c.network_region,
            "networkInternetCost": c.network_internet,
            "networkCostAdjustment": 0.0,
            "loadBalancerCost": c.lb,
            "loadBalancerCostAdjustment": 0.0,
            "sharedCost": c.shared,
            "externalCost": c.external,
            "totalCost": c.total,
        }
    if include_idle:
        rows["__idle__"] = idle_json(sim, charges, window_hours, window)
    return rows


def _base_app(sim: SimCluster, faults: FaultSwitch, clock: Clock) -> web.Application:
    app = web.Application()
    app[SIM] = sim
    app[FAULTS] = faults
    app[CLOCK] = clock
    return app


# ----------------------------------------------------------------------------------------------
# All three together
# ----------------------------------------------------------------------------------------------


@dataclass
class Upstreams:
    """Three running fakes: base URLs (``http://127.0.0.1:<port>``), the shared fault switch,
    and :meth:`close`. Usable as an async context manager."""

    sim: SimCluster
    faults: FaultSwitch
    dcgm_url: str
    prometheus_url: str
    opencost_url: str
    _runners: list[web.AppRunner] = field(default_factory=list, repr=False)

    @property
    def node_urls(self) -> dict[str, str]:
        """Per-node dcgm-exporter page URLs (as a DaemonSet exposes them), by node name."""
        return {n.name: f"{self.dcgm_url}/node/{n.name}/metrics" for n in self.sim.nodes if n.gpus}

    def exporter_config(
        self,
        *,
        dcgm_mode: Literal["prometheus", "scrape"] = "prometheus",
        per_node: bool = True,
        window: str = "1h",
        utilization_metric: str | None = None,
    ) -> dict[str, Any]:
        """See :func:`exporter_config`."""
        return exporter_config(
            self,
            dcgm_mode=dcgm_mode,
            per_node=per_node,
            window=window,
            utilization_metric=utilization_metric,
        )

    async def close(self) -> None:
        """Stop all three servers (slow handlers are woken first)."""
        self.faults.closing()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Upstreams:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def exporter_config(
    upstreams: Upstreams,
    *,
    dcgm_mode: Literal["prometheus", "scrape"] = "prometheus",
    per_node: bool = True,
    window: str = "1h",
    utilization_metric: str | None = None,
) -> dict[str, Any]:
    """The exporter configuration mapping (``settings.Settings`` shape) for these fakes:
    ``sources.dcgm`` (via the fake Prometheus, or scraping the per-node pages — or the single
    all-nodes page with ``per_node=False``), ``sources.opencost`` and the sim's ``tenancy``."""
    # Only URLs and tenancy by default: the exporter's own defaults read the sim's mixed fleet
    # (utilization_metric "auto"); a test may still name a metric.
    dcgm: dict[str, Any] = {"mode": dcgm_mode}
    if utilization_metric is not None:
        dcgm["utilization_metric"] = utilization_metric
    if dcgm_mode == "prometheus":
        dcgm["prometheus_url"] = upstreams.prometheus_url
    else:
        urls = list(upstreams.node_urls.values()) if per_node else []
        dcgm["scrape_urls"] = urls or [f"{upstreams.dcgm_url}/metrics"]
    sources: dict[str, Any] = {
        "dcgm": dcgm,
        "opencost": {"url": upstreams.opencost_url, "window": window},
    }
    if upstreams.sim.shared is not None:
        # HAMi's scheduler page and each HAMi node's monitor page, scraped directly.
        nodes = [n.name for n in upstreams.sim.shared.hami.nodes]
        sources["hami"] = {
            "mode": "scrape",
            "scrape_urls": [f"{upstreams.dcgm_url}/hami/scheduler/metrics"]
            + [f"{upstreams.dcgm_url}/hami/monitor/{n}/metrics" for n in nodes],
        }
    return {"sources": sources, "tenancy": upstreams.sim.tenancy_config()}


async def start_upstreams(
    sim: SimCluster,
    host: str = "127.0.0.1",
    clock: Clock = time.time,
    faults: FaultSwitch | None = None,
) -> Upstreams:
    """Start the fake dcgm-exporter, Prometheus and OpenCost on ephemeral ports of ``host``."""
    switch = faults if faults is not None else FaultSwitch()
    factories: list[Callable[[SimCluster, FaultSwitch, Clock], web.Application]] = [
        dcgm_app,
        prometheus_app,
        opencost_app,
    ]
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    try:
        for factory in factories:
            runner = web.AppRunner(factory(sim, switch, clock), access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, host, 0, shutdown_timeout=1.0)
            await site.start()
            port = runner.addresses[0][1]
            urls.append(f"http://{host}:{port}")
    except BaseException:
        for runner in reversed(runners):
            await runner.cleanup()
        raise
    return Upstreams(sim, switch, urls[0], urls[1], urls[2], runners)


__all__ = [
    "AGGREGATE_PROPERTIES",
    "CLOCK",
    "FAULTS",
    "FAULT_MODES",
    "SIM",
    "UPSTREAMS",
    "Fault",
    "FaultSwitch",
    "Upstreams",
    "aggregate_allocations",
    "dcgm_app",
    "exporter_config",
    "lean_allocations",
    "opencost_app",
    "parse_aggregate",
    "prometheus_app",
    "start_upstreams",
]
