"""The API's default answers built by the refresh (web.api.PreparedAnswers) and installed in
the read cache with the snapshot that carries them: once clients ask for a default request,
the first such request after each refresh builds nothing, answers the bytes a fresh build
gives, and never mixes two refreshes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aifinops.web import app as web_app
from aifinops.web.api import (
    API_ENERGY,
    API_FINANCE,
    API_PREPARED,
    API_READ_CACHE,
    API_REPORT,
    API_SETTINGS,
    PREPARE_WINDOW_S,
    PreparedAnswers,
    ReadCache,
    ReadView,
    _budgets,
    _recommendations,
    handle_budgets,
    handle_chargeback,
    handle_recommendations,
    handle_summary,
    prepare_answers,
)
from aifinops.web.app import REFRESHER
from tests.web.api.conftest import start_finance_demo
from tests.web.conftest import Demo, parse_page, series

# What a dashboard or a script asks first: every read route without options, and the
# current month's chargeback in each format.
DEFAULTS: dict[str, Callable[[web.Request], Any]] = {
    "/api/v1/summary": handle_summary,
    "/api/v1/budgets": handle_budgets,
    "/api/v1/recommendations": handle_recommendations,
    "/api/v1/chargeback": handle_chargeback,
    "/api/v1/chargeback?format=json": handle_chargeback,
    "/api/v1/chargeback?format=csv": handle_chargeback,
    "/api/v1/chargeback?format=focus": handle_chargeback,
}


async def fresh_build(app: web.Application, path: str, prepared: object = None) -> web.Response:
    """``path`` answered by a new, empty read cache over the app's current snapshot (with
    ``prepared`` as the snapshot's prepared answers: none by default, so it builds)."""
    shadow = web.Application()
    for key in (API_FINANCE, API_REPORT, API_ENERGY, API_SETTINGS):
        shadow[key] = app[key]  # type: ignore[index]
    shadow[API_PREPARED] = lambda: prepared
    shadow[API_READ_CACHE] = ReadCache()
    resp: web.Response = await DEFAULTS[path](make_mocked_request("GET", path, app=shadow))
    assert resp.status == 200
    return resp


def hooked(monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Callable[..., Any]], Any]) -> None:
    """Wrap the ``prepare`` hook web/app.py gives the refresher of the next app built."""
    real = web_app.answer_preparer
    monkeypatch.setattr(
        web_app, "answer_preparer", lambda settings, cache: wrap(real(settings, cache))
    )


async def ask_all(client: Any) -> None:
    for path in DEFAULTS:
        assert (await client.get(path)).status == 200, path


@pytest.fixture
async def gated(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A finance demo whose prepare hook waits for ``gate`` once ``armed`` is set."""
    armed, entered, gate = threading.Event(), threading.Event(), threading.Event()

    def wrap(prepare: Callable[..., Any]) -> Callable[..., Any]:
        def slow(report: Any, finance: Any) -> Any:
            if armed.is_set():
                entered.set()
                assert gate.wait(10), "the test never opened the gate"
            return prepare(report, finance)

        return slow

    hooked(monkeypatch, wrap)
    demo = await start_finance_demo(aiohttp_client)
    try:
        yield demo, armed, entered, gate
    finally:
        gate.set()
        await demo.upstreams.close()


async def test_first_request_after_a_refresh_is_prepared_and_a_fresh_build(
    finance_demo: Demo,
) -> None:
    client = finance_demo.client
    app = client.app
    cache: ReadCache = app[API_READ_CACHE]
    await finance_demo.refresh()
    # Nobody asked yet: nothing is prepared (no work a refresh for answers nobody reads).
    assert app[REFRESHER].snapshot.prepared is None
    await ask_all(client)
    assert cache.built == len(DEFAULTS)
    finance_demo.clock.now += 60.0
    await finance_demo.refresh()
    prepared = app[REFRESHER].snapshot.prepared
    assert isinstance(prepared, PreparedAnswers)
    assert prepared.finance is app[REFRESHER].snapshot.finance
    assert set(prepared.answers) == set(DEFAULTS)
    for path in DEFAULTS:
        resp = await client.get(path)
        assert resp.status == 200, path
        body = await resp.read()
        fresh = await fresh_build(app, path)
        assert body == fresh.body, path
        assert resp.headers["Content-Type"] == fresh.headers["Content-Type"], path
        assert resp.headers.get("Content-Disposition") == fresh.headers.get(
            "Content-Disposition"
        ), path
    assert cache.built == len(DEFAULTS) and cache.prepared_reports == 1
    # Another query string is still built on request, once.
    other = "/api/v1/chargeback?format=csv&share_idle=true"
    for _ in range(2):
        assert (await client.get(other)).status == 200
    assert cache.built == len(DEFAULTS) + 1


async def test_only_what_was_asked_for_recently_is_prepared(finance_demo: Demo) -> None:
    client = finance_demo.client
    app = client.app
    await finance_demo.refresh()
    assert (await client.get("/api/v1/summary")).status == 200
    assert (await client.get("/api/v1/chargeback?format=csv")).status == 200
    await finance_demo.refresh()
    prepared = app[REFRESHER].snapshot.prepared
    assert isinstance(prepared, PreparedAnswers)
    assert set(prepared.answers) == {"/api/v1/summary", "/api/v1/chargeback?format=csv"}

    now = [0.0]
    cache = ReadCache(clock=lambda: now[0])
    shadow = web.Application()
    shadow[API_FINANCE] = app[API_FINANCE]
    shadow[API_SETTINGS] = app[API_SETTINGS]
    await cache.answer(make_mocked_request("GET", "/api/v1/budgets", app=shadow), _budgets)
    other = make_mocked_request("GET", "/api/v1/recommendations?min_saving=1", app=shadow)
    await cache.answer(other, _recommendations)  # not a default request: never prepared
    assert cache.wanted() == {"/api/v1/budgets"}
    now[0] += PREPARE_WINDOW_S
    assert cache.wanted() == {"/api/v1/budgets"}
    now[0] += 1.0
    assert cache.wanted() == frozenset()


async def test_answers_never_mix_two_refreshes(gated: Any) -> None:
    demo, armed, entered, gate = gated
    client = demo.client
    app = client.app
    cache: ReadCache = app[API_READ_CACHE]
    await demo.refresh()
    await ask_all(client)
    demo.clock.now += 60.0
    await demo.refresh()
    built = cache.built
    first = app[REFRESHER].snapshot.prepared
    assert isinstance(first, PreparedAnswers)
    old = await (await client.get("/api/v1/summary")).read()
    assert old == first.answers["/api/v1/summary"].body

    demo.clock.now += 3600.0
    armed.set()
    refresh = asyncio.create_task(demo.refresh())
    assert await asyncio.to_thread(entered.wait, 10)
    # The next refresh's report is built and its answers are being prepared: until it
    # publishes, the previous answers keep serving, and nothing is built on request.
    during = await (await client.get("/api/v1/summary")).read()
    assert during == old and cache.built == built
    gate.set()
    await refresh

    second = app[REFRESHER].snapshot.prepared
    assert isinstance(second, PreparedAnswers)
    assert second.finance is app[REFRESHER].snapshot.finance is not first.finance
    for path in DEFAULTS:
        body = await (await client.get(path)).read()
        assert body == second.answers[path].body == (await fresh_build(app, path)).body, path
    assert first.answers["/api/v1/summary"].body != second.answers["/api/v1/summary"].body
    assert cache.built == built and cache.prepared_reports == 2
    # Answers prepared for another report are never installed: a snapshot whose prepared
    # set is not its finance's builds on request instead.
    stale = await fresh_build(app, "/api/v1/summary", prepared=first)
    assert stale.body == second.answers["/api/v1/summary"].body


async def test_a_failing_prepare_still_publishes_and_builds_on_request(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrap(prepare: Callable[..., Any]) -> Callable[..., Any]:
        def broken(report: Any, finance: Any) -> Any:
            raise RuntimeError("prepare broke")

        return broken

    hooked(monkeypatch, wrap)
    demo = await start_finance_demo(aiohttp_client)
    try:
        client = demo.client
        app = client.app
        await demo.refresh()
        snap = app[REFRESHER].snapshot
        assert snap.report is not None and snap.finance is not None
        assert snap.prepared is None
        assert snap.status is not None and snap.status.completed_at == demo.clock.now
        for path in DEFAULTS:
            resp = await client.get(path)
            assert resp.status == 200, path
            assert await resp.read() == (await fresh_build(app, path)).body, path
        # Built on request, once per distinct path (the bare chargeback and format=json
        # are two keys).
        assert app[API_READ_CACHE].built == len(DEFAULTS)
        demo.clock.now += 60.0
        await demo.refresh()  # the failure shows on the next page
        page = parse_page(await (await client.get("/metrics")).text())
        failures = series(page, "aifinops_refresh_failures_total")
        assert failures[("prepare",)] == 1.0
        assert sum(failures.values()) == 1.0
    finally:
        await demo.upstreams.close()


async def test_prepared_answers_keep_to_the_cache_bounds(finance_demo: Demo) -> None:
    app = finance_demo.client.app
    await finance_demo.refresh()
    view = ReadView.of(app)
    everything = prepare_answers(view)
    assert everything is not None and set(everything.answers) == set(DEFAULTS)
    sizes = {path: len(a.body) for path, a in everything.answers.items()}

    two = prepare_answers(view, max_entries=2)
    assert two is not None and list(two.answers) == list(DEFAULTS)[:2]
    # A byte budget that fits the summary and budgets but not the (larger) rest.
    budget = sizes["/api/v1/summary"] + sizes["/api/v1/budgets"]
    small = prepare_answers(view, max_bytes=budget)
    assert small is not None
    assert set(small.answers) == {"/api/v1/summary", "/api/v1/budgets"}
    # Installed in a cache with smaller bounds, the cache's own limits still hold.
    cache = ReadCache(max_entries=3)
    for path, answer in everything.answers.items():
        cache._store(path, answer)
    assert len(cache._entries) == 3
