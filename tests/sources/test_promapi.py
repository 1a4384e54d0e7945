"""Prometheus HTTP API instant queries: the pure vector parser and one real round trip."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.offload import run_cpu
from aifinops.sources.base import SourceError
from aifinops.sources.promapi import instant_query, parse_vector


def vector(*series: Any) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": list(series)}}
    ).encode()


def test_vector_series_keep_labels_and_special_values() -> None:
    body = vector(
        {"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL", "gpu": "0"}, "value": [1700.5, "37"]},
        {"metric": {"gpu": "1"}, "value": [1700.5, "NaN"]},
        {"metric": {"gpu": "2"}, "value": [1700.5, "+Inf"]},
        {"metric": {}, "value": [1700.5, "-Inf"]},
    )
    result = parse_vector(body)
    assert result[0] == ({"__name__": "DCGM_FI_DEV_GPU_UTIL", "gpu": "0"}, 37.0)
    assert math.isnan(result[1][1])
    assert result[2][1] == math.inf
    assert result[3] == ({}, -math.inf)


def test_empty_vector_and_extra_keys() -> None:
    body = json.dumps(
        {
            "status": "success",
            "warnings": ["PromQL info: ..."],
            "data": {"resultType": "vector", "result": []},
        }
    ).encode()
    assert parse_vector(body) == []


@pytest.mark.parametrize(
    ("body", "reason", "needle"),
    [
        (b"<html>gateway</html>", "parse", "not JSON"),
        (b'{"status": "succ', "parse", "not JSON"),
        (b"\xff\xfe\x00garbage", "parse", "not JSON"),
        (b"[]", "invalid", "not a JSON object"),
        (
            b'{"status":"error","errorType":"bad_data","error":"parse error at char 4"}',
            "invalid",
            "bad_data: parse error at char 4",
        ),
        (b'{"status":"success","data":{"resultType":"matrix","result":[]}}', "invalid", "matrix"),
        (
            b'{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}',
            "invalid",
            "scalar",
        ),
        (b'{"status":"success"}', "invalid", "None"),
        (b'{"status":"success","data":{"resultType":"vector","result":{}}}', "invalid", "list"),
        (vector({"metric": {"a": "b"}}), "invalid", "malformed"),
        (vector({"metric": {"a": 1}, "value": [1, "2"]}), "invalid", "malformed"),
        (vector({"metric": {}, "value": [1, 2]}), "invalid", "malformed"),
        (vector({"metric": {}, "value": [1]}), "invalid", "malformed"),
        (vector({"metric": {}, "value": [1, "twelve"]}), "invalid", "not a number"),
        (vector("x"), "invalid", "not an object"),
    ],
)
def test_bad_bodies_raise_a_bounded_reason(body: bytes, reason: str, needle: str) -> None:
    with pytest.raises(SourceError, match=needle) as info:
        parse_vector(body)
    assert info.value.reason == reason


async def test_instant_query_round_trip() -> None:
    seen: list[web.Request] = []

    async def query(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(body=vector({"metric": {"gpu": "0"}, "value": [1, "12.5"]}))

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="overloaded")

    app = web.Application()
    app.router.add_get("/prom/api/v1/query", query)
    app.router.add_get("/down/api/v1/query", broken)
    async with TestServer(app) as server, httpx.AsyncClient() as client:
        result = await instant_query(
            client,
            str(server.make_url("/prom/")),
            'sum by (gpu) (DCGM_FI_DEV_GPU_UTIL{cluster="a b"})',
            timeout=5,
            max_bytes=10_000,
            headers={"Authorization": "Bearer t0k"},
            run=run_cpu,
        )
        with pytest.raises(SourceError) as info:
            await instant_query(
                client,
                str(server.make_url("/down")),
                "up",
                timeout=5,
                max_bytes=10_000,
                run=run_cpu,
            )
    assert result == [({"gpu": "0"}, 12.5)]
    assert seen[0].query["query"] == 'sum by (gpu) (DCGM_FI_DEV_GPU_UTIL{cluster="a b"})'
    assert seen[0].headers["Authorization"] == "Bearer t0k"
    assert info.value.reason == "http_status"
