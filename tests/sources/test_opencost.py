"""OpenCost source: /allocation/compute bodies to Allocation rows; fetch against a fake OpenCost."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.model.inputs import Allocation
from aifinops.offload import run_cpu
from aifinops.settings import OpenCostSettings
from aifinops.sources.base import SourceError
from aifinops.sources.opencost import OpenCostSource, parse_allocation_response

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SWAGGER = (FIXTURES / "opencost_swagger_allocation_compute_example.json").read_bytes()


def body(*sets: dict[str, Any] | None, code: int = 200) -> bytes:
    return json.dumps({"code": code, "status": "success", "data": list(sets)}).encode()


def one(row: dict[str, Any], key: str = "ml/train-0") -> Allocation:
    [allocation] = parse_allocation_response(body({key: row}), 1.0).allocations
    return allocation


def test_swagger_example_parses_to_exact_dollars() -> None:
    parsed = parse_allocation_response(SWAGGER, 48.0)
    assert parsed.window_hours == 48.0
    rows = {a.name: a for a in parsed.allocations}
    assert list(rows) == ["kube-system", "opencost", "prometheus"]

    kube_system = rows["kube-system"]
    assert (kube_system.cpu_cost, kube_system.ram_cost, kube_system.gpu_cost) == (
        0.408822,
        0.016647,
        0.0,
    )
    assert round(kube_system.total_cost, 6) == 0.425469
    assert kube_system.minutes == 2879.235705
    assert (kube_system.namespace, kube_system.pod, kube_system.node) == ("kube-system", None, None)

    opencost = rows["opencost"]
    assert (opencost.cpu_cost, opencost.ram_cost) == (0.01817, 0.012474)
    assert opencost.pod == "opencost-75dc7dcc49-xdx5t"
    assert opencost.node == "ip-192-168-20-42.ap-southeast-2.compute.internal"
    assert opencost.gpu_count == 0.0 and opencost.gpu_usage_average is None
    assert dict(opencost.labels) == {} and dict(opencost.namespace_labels) == {}

    # Every row adds up to OpenCost's own totalCost.
    for key, raw in json.loads(SWAGGER)["data"][0].items():
        assert round(rows[key].total_cost, 6) == raw["totalCost"]


GPU_ROW = {
    "properties": {
        "cluster": "c1",
        "node": "gpu-node-1",
        "namespace": "ml",
        "pod": "train-0",
        "labels": {"aifinops_io_tenant": "research", "app": "trainer"},
        "namespaceLabels": {"team": "ml-platform"},
    },
    "minutes": 60.0,
    "cpuCost": 0.5,
    "cpuCostAdjustment": -0.1,
    "gpuCount": 1.0,
    "gpuHours": 1.0,
    "gpuCost": 2.5,
    "gpuCostAdjustment": 0.25,
    "ramCost": 0.2,
    "ramCostAdjustment": 0.0,
    "pvCost": 0.05,
    "pvCostAdjustment": 0.01,
    "networkCost": 0.03,
    "networkCostAdjustment": 0.0,
    "loadBalancerCost": 0.02,
    "loadBalancerCostAdjustment": 0.0,
    "sharedCost": 0.1,
    "externalCost": 0.4,
}


def test_every_cost_field_with_its_adjustment() -> None:
    a = one(GPU_ROW)
    assert a == Allocation(
        name="ml/train-0",
        namespace="ml",
        pod="train-0",
        node="gpu-node-1",
        minutes=60.0,
        cpu_cost=0.5 - 0.1,
        gpu_cost=2.75,
        ram_cost=0.2,
        pv_cost=0.05 + 0.01,
        network_cost=0.03,
        load_balancer_cost=0.02,
        shared_cost=0.1,
        external_cost=0.4,
        gpu_hours=1.0,
        gpu_count=1.0,
        gpu_usage_average=None,
        labels={"aifinops_io_tenant": "research", "app": "trainer"},
        namespace_labels={"team": "ml-platform"},
    )


@pytest.mark.parametrize(
    ("fields", "gpu_count", "gpu_usage"),
    [
        pytest.param(
            {
                "gpuCount": 1.0,
                "gpuAllocation": {
                    "gpuDevice": "nvidia0",
                    "gpuModel": "NVIDIA A100-SXM4-80GB",
                    "gpuUUID": "GPU-1",
                    "isGPUShared": True,
                    "gpuUsageAverage": 0.35,
                    "gpuRequestAverage": 0.5,
                },
            },
            0.5,
            0.35,
            id="gpuAllocation-object",
        ),
        pytest.param(
            {"gpuCount": 2.0, "gpuRequestAverage": 1.5, "gpuUsageAverage": 0.75},
            1.5,
            0.75,
            id="old-top-level-fields",
        ),
        pytest.param(
            {
                "gpuCount": 1.0,
                "gpuAllocation": {"gpuUsageAverage": None, "gpuRequestAverage": None},
            },
            1.0,
            None,
            id="gpuAllocation-with-nulls-falls-back",
        ),
        pytest.param(
            {"gpuCount": 3.0, "gpuAllocation": None, "gpuRequestAverage": None},
            3.0,
            None,
            id="gpuCount-only",
        ),
        pytest.param({}, 0.0, None, id="no-gpu-fields"),
    ],
)
def test_gpu_request_and_usage(
    fields: dict[str, Any], gpu_count: float, gpu_usage: float | None
) -> None:
    a = one({"properties": {"namespace": "ml", "pod": "p"}, "minutes": 60, **fields})
    assert (a.gpu_count, a.gpu_usage_average) == (gpu_count, gpu_usage)


def test_null_numbers_are_zero() -> None:
    row = {k: None for k in GPU_ROW if k != "properties"}
    a = one({**row, "properties": {"namespace": "ml", "pod": "p", "labels": None}})
    assert a.total_cost == 0.0 and a.minutes == 0.0 and a.gpu_hours == 0.0
    assert a.gpu_usage_average is None and dict(a.labels) == {}


@pytest.mark.parametrize(
    ("cost", "adjustment"),
    [("0.5", "-0.75"), ("-1.0", "null"), ("NaN", "0.0"), ("Infinity", "0.0"), ("1.0", "-Infinity")],
)
def test_negative_or_non_finite_cost_is_clamped_to_zero(cost: str, adjustment: str) -> None:
    # JSON tokens as written: Python's json module reads NaN/Infinity, so the parser must too.
    row = f'{{"cpuCost": {cost}, "cpuCostAdjustment": {adjustment}, "ramCost": 0.25}}'
    doc = f'{{"code": 200, "data": [{{"ns/p": {row}}}]}}'.encode()
    [a] = parse_allocation_response(doc, 1.0).allocations
    assert (a.cpu_cost, a.ram_cost) == (0.0, 0.25)


def test_idle_and_unallocated_rows_keep_their_sentinel_names() -> None:
    parsed = parse_allocation_response(
        body(
            {
                "__idle__": {"properties": {"cluster": "c1"}, "cpuCost": 1.0, "gpuCost": 8.0},
                "c2/__idle__": {"properties": {"cluster": "c2"}, "gpuCost": 4.0},
                "__unallocated__": {"properties": {"cluster": "c1"}, "ramCost": 0.5},
                "ml/train-0": GPU_ROW,
            }
        ),
        1.0,
    )
    flags = {a.name: (a.is_idle, a.is_unallocated, a.namespace) for a in parsed.allocations}
    assert flags == {
        "__idle__": (True, False, None),
        "c2/__idle__": (True, False, None),
        "__unallocated__": (False, True, None),
        "ml/train-0": (False, False, "ml"),
    }


def test_several_sets_merge_by_key() -> None:
    first = {"ml/p": {**GPU_ROW, "minutes": 30.0, "gpuCount": 1.0, "gpuUsageAverage": 0.5}}
    second = {
        "ml/p": {**GPU_ROW, "minutes": 90.0, "gpuCount": 3.0, "gpuUsageAverage": 0.9},
        "ml/q": {"properties": {"namespace": "ml", "pod": "q"}, "cpuCost": 1.0},
    }
    parsed = parse_allocation_response(body(first, None, second), 2.0)
    rows = {a.name: a for a in parsed.allocations}
    p = rows["ml/p"]
    assert p.minutes == 120.0
    assert p.gpu_cost == pytest.approx(5.5)
    assert p.cpu_cost == pytest.approx(0.8)
    assert p.gpu_count == pytest.approx((1.0 * 30 + 3.0 * 90) / 120)
    assert p.gpu_usage_average == pytest.approx((0.5 * 30 + 0.9 * 90) / 120)
    assert rows["ml/q"].cpu_cost == 1.0


@pytest.mark.parametrize("data", [[], [{}], None, [None]])
def test_empty_answers_are_empty_sets(data: Any) -> None:
    doc = json.dumps({"code": 200, "data": data}).encode()
    assert parse_allocation_response(doc, 1.0).allocations == ()


@pytest.mark.parametrize(
    ("doc", "reason", "needle"),
    [
        (b"<html>502 Bad Gateway</html>", "parse", "not JSON"),
        (b'{"code": 200, "data": [', "parse", "not JSON"),
        (b'"ok"', "invalid", "Expected `object`, got `str`"),
        (b'{"code": 500, "message": "error computing allocation"}', "invalid", "code 500"),
        (b'{"data": []}', "invalid", "code None"),
        (b'{"code": 200, "data": {"a": {}}}', "invalid", r"got `object` - at `\$\.data`"),
        (b'{"code": 200, "data": {}}', "invalid", r"got `object` - at `\$\.data`"),
        (b'{"code": 200, "data": [[]]}', "invalid", r"got `array` - at `\$\.data\[0\]`"),
        (b'{"code": 200, "data": [{"a": 1}]}', "invalid", "Expected `object`, got `int`"),
        (b'{"code": 200, "data": [{"a": {"cpuCost": "0.5"}}]}', "invalid", "got `str` .*cpuCost"),
        (b'{"code": 200, "data": [{"a": {"minutes": true}}]}', "invalid", "got `bool` .*minutes"),
        (b'{"code": 200, "data": [{"a": {"properties": ["x"]}}]}', "invalid", "properties"),
        (b'{"code": 200, "data": [{"a": {"properties": {"pod": 5}}}]}', "invalid", "pod"),
        (
            b'{"code": 200, "data": [{"a": {"properties": {"labels": {"x": 1}}}}]}',
            "invalid",
            "labels",
        ),
        (b'{"code": 200, "data": [{"a": {"gpuAllocation": 3}}]}', "invalid", "gpuAllocation"),
        (b'{"code": 200, "data": [{"a": {"gpuCost": 1' + b"0" * 400 + b"}}]}", "invalid", "a"),
    ],
)
def test_bad_bodies_raise_a_bounded_reason(doc: bytes, reason: str, needle: str) -> None:
    with pytest.raises(SourceError, match=needle) as info:
        parse_allocation_response(doc, 1.0)
    assert info.value.reason == reason


# --- fetch against a fake OpenCost --------------------------------------------------------


async def allocation_compute(request: web.Request) -> web.StreamResponse:
    kind = request.match_info["kind"]
    if kind == "ok":
        request.app[REQUESTS].append(request)
        return web.Response(body=SWAGGER, content_type="application/json")
    if kind == "http_status":
        return web.Response(status=500, text='{"code":500,"message":"boom"}')
    if kind == "timeout":
        await asyncio.sleep(2)
        return web.Response(body=SWAGGER)
    if kind == "too_large":
        return web.Response(body=SWAGGER + b" " * 5000)
    return web.Response(body=b'{"code": 200, "data": [{"trunc')


REQUESTS = web.AppKey("requests", list[web.Request])


@pytest.fixture
async def opencost() -> AsyncIterator[TestServer]:
    app = web.Application()
    app[REQUESTS] = []
    app.router.add_get("/{kind}/allocation/compute", allocation_compute)
    server = TestServer(app)
    async with server:
        yield server


def settings_for(url: str, **extra: Any) -> OpenCostSettings:
    return OpenCostSettings(url=url, timeout_seconds=0.3, max_response_bytes=8000, **extra)


async def test_fetch_sends_the_allocation_query(opencost: TestServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0k")
    source = OpenCostSource(
        settings_for(
            str(opencost.make_url("/ok/")),
            window="2d",
            params={"filter": 'cluster:"cluster-one"'},
            bearer_token_file=token,
        ),
        run=run_cpu,
    )
    async with httpx.AsyncClient() as client:
        parsed = await source.fetch(client)
    assert source.name == "opencost"
    assert parsed.window_hours == 48.0
    assert [a.name for a in parsed.allocations] == ["kube-system", "opencost", "prometheus"]
    [request] = opencost.app[REQUESTS]
    assert dict(request.query) == {
        "window": "2d",
        "aggregate": "namespace,pod",
        "includeIdle": "true",
        "shareIdle": "false",
        "accumulate": "true",
        "filter": 'cluster:"cluster-one"',
    }
    assert request.headers["Authorization"] == "Bearer t0k"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["http_status", "connect", "timeout", "too_large", "parse"])
async def test_fetch_failures_have_a_reason(opencost: TestServer, kind: str) -> None:
    url = closed_port_url() if kind == "connect" else str(opencost.make_url(f"/{kind}"))
    async with httpx.AsyncClient() as client:
        with pytest.raises(SourceError) as info:
            await OpenCostSource(settings_for(url), run=run_cpu).fetch(client)
    assert info.value.reason == kind
