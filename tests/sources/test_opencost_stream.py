"""Both OpenCost fetches decode while the body arrives: the result (or the error) is exactly
what the whole-body parse functions give, however the body is chunked; a body that breaks the
streamed shape midway is fetched again and decoded whole."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.upstreams import aggregate_allocations, lean_allocations, parse_aggregate
from aifinops.offload import run_cpu
from aifinops.settings import OpenCostSettings, TenancySettings
from aifinops.settings_finance import BudgetsSettings
from aifinops.sources import jsonchunks
from aifinops.sources.base import SourceError
from aifinops.sources.opencost import (
    DAY_SECONDS,
    OpenCostMonthSource,
    OpenCostSource,
    parse_allocation_response,
    parse_allocation_sets,
)

T0 = 1_750_000_000.0
URL = "http://opencost.test"


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    return SimCluster(ClusterSpec.scaled(120))


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonchunks, "PIECE_BYTES", 4096)


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class Upstream:
    """Answers every request with the next body, in chunks of random sizes."""

    def __init__(self, *bodies: bytes, seed: int = 0) -> None:
        self.bodies = list(bodies)
        self.requests: list[httpx.Request] = []
        self.rng = random.Random(seed)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.bodies[min(len(self.requests), len(self.bodies)) - 1]

        async def chunks() -> AsyncIterator[bytes]:
            i = 0
            while i < len(body):
                n = self.rng.choice([1, 7, 100, 1000, 5000, 70000])
                yield body[i : i + n]
                i += n
                await asyncio.sleep(0)

        return httpx.Response(200, content=chunks())

    async def fetch(self, source: Any) -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(self.handler)) as client:
            return await source.fetch(client)


def rate_source(**kw: Any) -> OpenCostSource:
    return OpenCostSource(OpenCostSettings(url=URL, window="1h", **kw), run=run_cpu)


@pytest.mark.parametrize("seed", range(4))
async def test_streamed_rate_answer_equals_the_whole_body_parse(sim: SimCluster, seed: int) -> None:
    body = compact(sim.opencost_allocation(T0, 1.0))
    up = Upstream(body, seed=seed)
    assert await up.fetch(rate_source()) == parse_allocation_response(body, 1.0)
    assert len(up.requests) == 1


def month_body(sim: SimCluster, start: float, days: int, by: str | None) -> bytes:
    sets: list[Any] = []
    for day in range(days):
        end = start + (day + 1) * DAY_SECONDS
        if by is None:
            rows = sim.opencost_allocation(end, 24.0)["data"][0]
        else:
            agg = parse_aggregate(by)
            assert agg is not None
            rows = aggregate_allocations(lean_allocations(sim, end, 24.0, True), agg)
        sets.append(rows if day != 1 else None)  # a day OpenCost has nothing for
    sets.insert(2, {})
    return compact({"code": 200, "status": "success", "data": sets})


@pytest.mark.parametrize("how", ["tenancy", "pod"])
async def test_streamed_month_equals_the_whole_body_parse(sim: SimCluster, how: str) -> None:
    tenancy = TenancySettings.model_validate(sim.tenancy_config())
    source = OpenCostMonthSource(
        OpenCostSettings(url=URL, month_aggregation=how, history_months=0, month_piece_days=31),  # type: ignore[arg-type]
        BudgetsSettings(lookback_days=3),
        lambda: T0,
        tenancy,
        run=run_cpu,
    )
    start, end, params = source.query(T0)
    by = None if how == "pod" else params["aggregate"]
    body = month_body(sim, start, 4, by)
    up = Upstream(body, seed=3)
    got = await up.fetch(source)
    assert got == parse_allocation_sets(body, start, end, DAY_SECONDS, source.aggregation)
    assert [len(s.allocations) for _, _, s in got.sets][1:3] == [0, 0]
    assert len(got.sets) == 5 and len(up.requests) == 1


HOSTILE_ROWS = {
    # a key with quotes and markers, labels that spell the cut markers
    'ns/odd":{"name":"': {"name": "x", "properties": {"namespace": "ns"}, "ramCost": 1.0},
    **{
        f"ns/p{i}": {
            "name": f"ns/p{i}",
            "properties": {"namespace": "ns", "labels": {"a": '},{"x":{"name":"' * 40}},
            "cpuCost": i * 0.5,
        }
        for i in range(40)
    },
}


@pytest.mark.parametrize(
    "doc",
    [
        # shapes streaming does not cut, valid all the same
        {"code": 200, "status": "success", "data": [HOSTILE_ROWS], "warning": "late field"},
        {"status": "success", "code": 200, "data": [HOSTILE_ROWS]},
        {"code": 200, "status": "success", "data": [HOSTILE_ROWS, HOSTILE_ROWS]},
    ],
)
async def test_bodies_of_another_shape_give_the_whole_body_result(doc: dict[str, Any]) -> None:
    body = compact(doc)
    up = Upstream(body)
    source = rate_source()
    assert await up.fetch(source) == parse_allocation_response(body, 1.0)
    again = len(up.requests)
    assert again in (1, 2)  # 2: the shape broke midway, the body was fetched again
    await up.fetch(source)
    assert len(up.requests) == again + 1  # never twice for every answer


async def test_a_pretty_printed_body_is_decoded_whole_from_one_request(sim: SimCluster) -> None:
    body = json.dumps(sim.opencost_allocation(T0, 1.0), indent=1).encode()
    up = Upstream(body)
    assert await up.fetch(rate_source()) == parse_allocation_response(body, 1.0)
    assert len(up.requests) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"code":200,"status":"success","data":[{"a/b":{"name":"a/b","cpuCost":1', "parse"),
        (b'{"code":200,"status":"success","data":[{"a/b":{"name":"a/b","cpuCost":"x"}}]}',
         "invalid"),
        (b'{"code":200,"status":"success","data":[{"a/b":{"name":"a/b"}}]}garbage', "parse"),
        (b'{"code":500,"message":"boom"}', "invalid"),
        (b"<html>", "parse"),
    ],
)  # fmt: skip
async def test_broken_bodies_fail_as_the_whole_body_parse_fails(body: bytes, reason: str) -> None:
    with pytest.raises(SourceError) as whole:
        parse_allocation_response(body, 1.0)
    up = Upstream(body)
    source = rate_source()
    with pytest.raises(SourceError) as streamed:
        await up.fetch(source)
    assert streamed.value.reason == whole.value.reason == reason
    # A broken body does not switch the source to whole bodies for good.
    good = b'{"code":200,"status":"success","data":[{"a/b":{"name":"a/b","cpuCost":1}}]}'
    up.bodies = [good]
    before = len(up.requests)
    await up.fetch(source)
    assert len(up.requests) == before + 1


async def test_the_size_cap_holds_while_streaming(sim: SimCluster) -> None:
    body = compact(sim.opencost_allocation(T0, 1.0))
    up = Upstream(body)
    with pytest.raises(SourceError) as err:
        await up.fetch(rate_source(max_response_bytes=len(body) // 2))
    assert err.value.reason == "too_large"
