"""The read routes' per-report answer cache (web.api.ReadCache), through the real app and
on its own."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aifinops.web.api import API_FINANCE, API_READ_CACHE, ApiError, ReadCache, ReadView
from aifinops.web.app import REFRESHER


async def test_identical_reads_share_one_answer_per_report(finance_demo: Any) -> None:
    client = finance_demo.client
    cache: ReadCache = client.app[API_READ_CACHE]
    await finance_demo.refresh()
    first = await client.get("/api/v1/chargeback?format=csv")
    body = await first.read()
    assert first.status == 200
    assert first.headers["Content-Disposition"].startswith("attachment;")
    assert "/api/v1/chargeback?format=csv" in cache._entries
    again = await client.get("/api/v1/chargeback?format=csv")
    assert again.status == 200 and await again.read() == body
    assert again.headers["Content-Type"].startswith("text/csv")
    assert again.headers["Content-Disposition"] == first.headers["Content-Disposition"]

    summary = await (await client.get("/api/v1/summary")).json()
    finance_demo.clock.now += 3600.0
    await finance_demo.refresh()
    later = await (await client.get("/api/v1/summary")).json()
    assert later["generated_at"] != summary["generated_at"]
    # A new report empties the cache: what it holds now is that report's prepared answers.
    assert "/api/v1/chargeback?format=csv" in cache._entries
    assert set(cache._entries) == set(client.app[REFRESHER].snapshot.prepared.answers)


async def test_errors_are_not_cached(finance_demo: Any) -> None:
    client = finance_demo.client
    await finance_demo.refresh()
    bad = await client.get("/api/v1/chargeback?period=1999-01")
    assert bad.status == 404
    assert (await bad.json())["error"]["field"] == "period"
    assert client.app[API_READ_CACHE]._entries == {}


class FakeReport:
    def __init__(self, now: float) -> None:
        self.now = now


def request_for(app: web.Application, path: str) -> web.Request:
    return make_mocked_request("GET", path, app=app)


async def test_builds_once_per_report_and_path_and_stays_bounded() -> None:
    app = web.Application()
    report = FakeReport(1.0)
    app[API_FINANCE] = lambda: report  # type: ignore[assignment,return-value]
    cache = ReadCache(max_entries=3, max_bytes=250)
    calls: list[str] = []

    def build(view: ReadView, query: Any) -> web.Response:
        assert view.finance is report  # the snapshot read when the request came
        asked = "&".join(f"{k}={v}" for k, v in query.items())
        calls.append(asked)
        if "bad" in asked:
            raise ApiError(400, "invalid_request", "bad", "x")
        return web.json_response({"query": asked, "pad": "x" * 50})

    for asked in ("k=a", "k=a", "k=b", "k=a&x=1", "k=b"):
        resp = await cache.answer(request_for(app, f"/r?{asked}"), build)
        assert json.loads(resp.body)["query"] == asked  # type: ignore[arg-type]
    assert calls == ["k=a", "k=b", "k=a&x=1"] and cache.built == 3
    # A fourth distinct answer pushes out the oldest (entries, then bytes: ~80 B each).
    await cache.answer(request_for(app, "/r?k=c"), build)
    assert list(cache._entries) == ["/r?k=b", "/r?k=a&x=1", "/r?k=c"]
    assert cache._bytes == sum(len(a.body) for a in cache._entries.values()) <= 250
    try:
        await cache.answer(request_for(app, "/r?k=bad"), build)
    except ApiError as exc:
        assert exc.status == 400
    else:
        raise AssertionError("the builder's error must reach the caller")
    assert "/r?k=bad" not in cache._entries

    report = FakeReport(2.0)  # a new report: everything is built again
    calls.clear()
    await cache.answer(request_for(app, "/r?k=b"), build)
    assert calls == ["k=b"] and list(cache._entries) == ["/r?k=b"]
