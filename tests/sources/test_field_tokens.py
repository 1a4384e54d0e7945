"""What real token clients do that the demo once did not (issue 12, issue 14): LiteLLM's team
ids and display names, cached counters with fewer labels, "None" values, a 307 on /metrics,
an application whose first LLM call comes after the exporter's first read, counter dips behind
HA Prometheus, one unreadable series, one unreachable scrape target, an OpenAI SDK pointed at
vLLM or Azure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from aifinops.exposition.targets import token_source_families
from aifinops.model.inputs import token_observations
from aifinops.model.tokens import TokenState, counter_increments
from aifinops.offload import run_cpu
from aifinops.settings import TokenSourceSettings
from aifinops.sources.base import SourceError
from aifinops.sources.promtext import parse_text
from aifinops.sources.tokens import (
    OPENAI_COMPATIBLE,
    TokenSource,
    mapping_for,
    observations_from_samples,
)
from tests.model.token_builders import Runner, obs, token_context

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LITELLM_PAGE = FIXTURES / "litellm_proxy_metrics.txt"
OTEL_PAGE = FIXTURES / "otel_openai_v2_collector_metrics.txt"
T0 = 1_700_000_000.0


def read(preset: str, page: str, **overrides: Any) -> list[Any]:
    settings = TokenSourceSettings(
        name="t",
        preset=preset,
        prometheus_url="http://p",
        **overrides,  # type: ignore[arg-type]
    )
    mapping = mapping_for(settings)
    return list(observations_from_samples("tokens:t", parse_text(page, mapping.wanted()), mapping))


def sums(observations: list[Any]) -> dict[tuple[Any, ...], float]:
    out: dict[tuple[Any, ...], float] = {}
    for o in observations:
        if o.kind == "tokens":
            k = (o.tenant, o.model, o.provider, o.token_type)
            out[k] = out.get(k, 0.0) + o.value
    return out


# --- LiteLLM's real label set ----------------------------------------------------------------
def test_litellm_page_tenants_are_team_ids_and_cached_tokens_are_counted_once() -> None:
    page = LITELLM_PAGE.read_text()
    got = sums(read("litellm", page))
    # From the fixture's own numbers (see its header): input counters include cached tokens;
    # the cached counter carries no org_id/org_alias, yet pairs with its input series.
    assert got == {
        ("team-0005", "gpt-4o", "openai", "input"): 1200.0 - 300.0 + 640.0 - 0.0,
        ("team-0005", "gpt-4o", "openai", "cached_input"): 300.0,
        ("team-0005", "gpt-4o", "openai", "output"): 410.0 + 95.0,
        ("team-0011", "claude-sonnet-4-5", "anthropic", "input"): 2080.0 - 160.0,
        ("team-0011", "claude-sonnet-4-5", "anthropic", "cached_input"): 160.0,
        ("team-0011", "claude-sonnet-4-5", "anthropic", "output"): 512.0,
        (None, "gpt-4.1-mini", "openai", "input"): 75.0,  # team "None": no tenant
        (None, "gpt-4.1-mini", "openai", "output"): 20.0,
    }
    text = repr(read("litellm", page))
    for display_or_personal in ("Team 0005", "Search Team", "org-", "Retail", "sk-", "@"):
        assert display_or_personal not in text


def test_cached_tokens_pair_on_shared_labels_with_or_without_org_labels() -> None:
    base = 'model="m",team="t",hashed_api_key="k",api_provider="openai"'
    for cached_org in ("", ',org_id="o",org_alias="O"'):  # 1.108.7, and after LIT-2825
        page = (
            f'litellm_input_tokens_metric_total{{{base},org_id="o",org_alias="O"}} 1000\n'
            f"litellm_input_cached_tokens_metric_total{{{base}{cached_org}}} 250\n"
        )
        assert sums(read("litellm", page)) == {
            ("t", "m", "openai", "input"): 750.0,
            ("t", "m", "openai", "cached_input"): 250.0,
        }


def test_a_cached_counter_with_fewer_distinguishing_labels_is_split_by_value() -> None:
    # LiteLLM can filter labels per metric group: here the cached counter keeps only model
    # and team, while the input counter also has the key. 300 cached over 1000 + 500 input.
    page = (
        'litellm_input_tokens_metric_total{model="m",team="t",hashed_api_key="a"} 1000\n'
        'litellm_input_tokens_metric_total{model="m",team="t",hashed_api_key="b"} 500\n'
        'litellm_input_cached_tokens_metric_total{model="m",team="t"} 300\n'
    )
    values = sorted(o.value for o in read("litellm", page) if o.token_type == "input")
    assert values == [400.0, 800.0]  # 500 − 100, 1000 − 200: input 1,200 = 1,500 − 300


# --- redirects and credentials ---------------------------------------------------------------
async def serve(routes: dict[str, Any]) -> TestServer:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_litellm_307_to_metrics_slash_is_followed_with_the_bearer_token(
    tmp_path: Path,
) -> None:
    seen: list[str | None] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/metrics/")

    async def metrics(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer sk-master":
            return web.Response(status=401)
        return web.Response(text=LITELLM_PAGE.read_text())

    token = tmp_path / "litellm-token"
    token.write_text("sk-master\n")
    server = await serve({"/metrics": redirect, "/metrics/": metrics})
    try:
        source = TokenSource(
            TokenSourceSettings(
                name="litellm",
                preset="litellm",
                mode="scrape",
                scrape_targets=[{"url": str(server.make_url("/metrics"))}],  # type: ignore[list-item]
                bearer_token_file=token,
            ),
            run=run_cpu,
        )
        async with httpx.AsyncClient() as client:
            got = await source.fetch(client)
    finally:
        await server.close()
    assert seen == ["Bearer sk-master"]
    assert sums(list(token_observations(got))) == sums(read("litellm", LITELLM_PAGE.read_text()))


async def test_a_redirect_to_another_host_is_refused_and_nothing_is_sent_there() -> None:
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text='litellm_input_tokens_metric_total{model="m",team="t"} 1\n')

    other = await serve({"/steal": elsewhere})
    # Same address, other host name: a different origin, so never followed.
    target = f"http://localhost:{other.port}/steal"

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    server = await serve({"/metrics": redirect})
    try:
        source = TokenSource(
            TokenSourceSettings(
                name="litellm",
                preset="litellm",
                mode="scrape",
                scrape_targets=[{"url": str(server.make_url("/metrics"))}],  # type: ignore[list-item]
            ),
            run=run_cpu,
        )
        async with httpx.AsyncClient() as client:
            with pytest.raises(SourceError) as err:
                await source.fetch(client)
    finally:
        await server.close()
        await other.close()
    assert err.value.reason == "http_status" and "302" in str(err.value)
    assert hits == []


# --- first reads, dips -----------------------------------------------------------------------
def test_an_origin_read_empty_counts_its_later_series_from_zero(catalog: Any) -> None:
    r = Runner(token_context(), catalog)
    # The app's page is empty at the first two reads (no LLM call yet), then has its first.
    r.step(T0, [], sources=["tokens:otel"])
    r.step(T0 + 30, [], sources=["tokens:otel"])
    first = [obs("tokens:otel", "s1", "input", "gpt-4o", 120, tenant="shop")]
    rep = r.step(T0 + 60, first, sources=["tokens:otel"])
    assert rep.tokens is not None
    assert rep.tokens.tokens[("shop", "gpt-4o", "openai", "input")] == 120
    # A source never read before still starts with a baseline (history is not ours).
    other = [obs("tokens:new", "s9", "input", "gpt-4o", 5000, tenant="x")]
    rep = r.step(T0 + 90, first + other, sources=["tokens:otel", "tokens:new"])
    assert ("x", "gpt-4o", "openai", "input") not in rep.tokens.tokens


def test_ha_prometheus_dips_are_jitter_and_a_real_reset_still_counts() -> None:
    state = TokenState()
    deltas: list[float] = []
    reads = [1_000_000.0, 1_001_000.0, 1_000_500.0, 1_002_000.0, 1_001_900.0, 1_002_100.0]
    reads += [40.0, 90.0]  # a restart: far below the high-water mark, counted from zero
    for i, v in enumerate(reads):
        u = counter_increments(
            [obs("tokens:l", "s1", "input", "m", v)], state, T0 + 30 * i, 3600, dip_tolerance=0.1
        )
        deltas.append(sum(d for _, d in u.increments))
        state = TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)
    assert deltas == [0.0, 1000.0, 0.0, 1000.0, 0.0, 100.0, 40.0, 50.0]
    assert sum(deltas[:6]) == 2100.0


def test_the_dip_tolerance_is_configured_and_validated() -> None:
    from aifinops.settings import ConfigError, settings_from_mapping

    s = settings_from_mapping({"tokens": {"counter_dip_tolerance_ratio": 0.02}})
    assert s.tokens.to_model().dip_tolerance == 0.02
    with pytest.raises(ConfigError, match="counter_dip_tolerance_ratio"):
        settings_from_mapping({"tokens": {"counter_dip_tolerance_ratio": 1.5}})


# --- one bad series, one bad target ----------------------------------------------------------
async def test_a_malformed_series_is_skipped_and_counted_not_the_source_down() -> None:
    good = {"__name__": "litellm_input_tokens_metric_total", "model": "m", "team": "t"}
    answer = json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": good, "value": [1, "100"]},
                    {"metric": {**good, "team": "x\ud800"}, "value": [1, "7"]},
                    {"metric": {**good, "team": 5}, "value": [1, "8"]},
                    {"metric": {**good, "team": "y"}, "value": [1, "many"]},
                ],
            },
        }
    ).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer)

    source = TokenSource(
        TokenSourceSettings(name="l", preset="litellm", prometheus_url="http://prometheus"),
        run=run_cpu,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for _ in range(3):
            got = await source.fetch(client)
            # The lone surrogate is skipped here, or read as replaced text where the source
            # boundary sanitizes upstream text first: never raised, never an unencodable label.
            assert ("t", 100.0) in [(o.tenant, o.value) for o in token_observations(got)]
            assert all(str(o.tenant).encode() for o in token_observations(got))
    # A label of a wrong type and a value that is no number: skipped, counted once per read.
    assert source.skipped_total in (2 * 3, 3 * 3)
    (up, skipped) = token_source_families([source])
    assert list(skipped.samples) == [(("tokens:l",), float(source.skipped_total))]
    assert list(up.samples) == []


async def test_one_unreachable_target_marks_only_that_target_down() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text='vllm:generation_tokens_total{model_name="llama"} 7\n')

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    server = await serve({"/a/metrics": page, "/b/metrics": broken})
    port = server.port
    a = {"url": str(server.make_url("/a/metrics")), "labels": {"namespace": "llm", "pod": "a"}}
    b = {"url": str(server.make_url("/b/metrics")), "labels": {"namespace": "llm", "pod": "b"}}
    try:
        both = TokenSource(
            TokenSourceSettings(name="v", preset="vllm", mode="scrape", scrape_targets=[a, b]),  # type: ignore[list-item]
            run=run_cpu,
        )
        dead = TokenSource(
            TokenSourceSettings(name="w", preset="vllm", mode="scrape", scrape_targets=[b]),  # type: ignore[list-item]
            run=run_cpu,
        )
        async with httpx.AsyncClient() as client:
            with capture_logs() as logs:
                for _ in range(3):
                    got = await both.fetch(client)
            with pytest.raises(SourceError) as err:
                await dead.fetch(client)
    finally:
        await server.close()
    assert [(o.value, o.pod) for o in token_observations(got)] == [(7.0, "a")]
    # one line when the target goes down, not one per refresh; no traceback
    assert [(e["event"], e["target"]) for e in logs] == [
        ("token_target_down", f"127.0.0.1:{port}/b/metrics")
    ]
    assert not any("exc_info" in e for e in logs)
    # a's origin was read; b's was not (it never gave a page): its first read is a baseline.
    assert got.origins == {f"tokens:v#127.0.0.1:{port}/a/metrics"}
    assert err.value.reason == "http_status"
    up, _ = token_source_families([both, dead])
    assert dict(up.samples) == {
        ("tokens:v", f"127.0.0.1:{port}/a/metrics"): 1.0,
        ("tokens:v", f"127.0.0.1:{port}/b/metrics"): 0.0,
        ("tokens:w", f"127.0.0.1:{port}/b/metrics"): 0.0,
    }


# --- OpenTelemetry openai-v2 -----------------------------------------------------------------
def test_otel_openai_v2_provider_comes_from_server_address() -> None:
    got = sums(read("otel_genai", OTEL_PAGE.read_text()))
    assert got == {
        (None, "gpt-4o-mini", "openai", "input"): 1250.0,
        (None, "gpt-4o-mini", "openai", "output"): 310.0,
        (None, "gpt-4o", "azure", "input"): 900.0,
        (None, "gpt-4o", "azure", "output"): 200.0,
        (None, "meta-llama/Llama-3.1-8B-Instruct", OPENAI_COMPATIBLE, "input"): 1920.0,
        (None, "meta-llama/Llama-3.1-8B-Instruct", OPENAI_COMPATIBLE, "output"): 480.0,
    }
    # A configured pattern names the in-cluster vLLM (it replaces the preset's list).
    got = sums(
        read(
            "otel_genai",
            OTEL_PAGE.read_text(),
            server_address_providers={
                "vllm.*.svc.cluster.local": "vllm",
                "api.openai.com": "openai",
            },
        )
    )
    assert got[(None, "meta-llama/Llama-3.1-8B-Instruct", "vllm", "input")] == 1920.0
    assert (None, "gpt-4o", OPENAI_COMPATIBLE, "input") in got  # Azure no longer listed


async def test_an_apps_first_llm_call_after_the_exporters_first_read_is_counted(
    aiohttp_client: Any,
) -> None:
    """Issue 12, item 10, through the real app: the OpenTelemetry page of an app is empty at
    the exporter's first reads; its first calls then show up and are all counted."""
    from aifinops.settings import settings_from_mapping
    from aifinops.web.app import REFRESHER, create_app
    from tests.web.conftest import parse_page, series

    body = ["# no LLM call yet\n"]

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=body[0])

    server = await serve({"/metrics": page})
    now = [T0]
    try:
        cfg = {
            "name": "shop",
            "preset": "otel_genai",
            "mode": "scrape",
            "tenant": "shop",
            "scrape_targets": [{"url": str(server.make_url("/metrics"))}],
        }
        settings = settings_from_mapping({"tokens": {"sources": [cfg]}})
        source = TokenSource(settings.tokens.sources[0], run=run_cpu)
        client = await aiohttp_client(
            create_app(
                settings,
                sources=[(source, 5.0, 600.0)],
                clock=lambda: now[0],
                run_loop=False,
            )
        )
        refresher = client.app[REFRESHER]
        await refresher.refresh_once()
        now[0] += 30
        await refresher.refresh_once()
        body[0] = OTEL_PAGE.read_text()  # the first calls
        now[0] += 30
        await refresher.refresh_once()
        text = await (await client.get("/metrics")).text()
    finally:
        await server.close()
    got = series(parse_page(text), "aifinops_tokens_total", tenant="shop")
    assert got[("gpt-4o-mini", "openai", "input")] == 1250.0
    assert got[("meta-llama/Llama-3.1-8B-Instruct", OPENAI_COMPATIBLE, "output")] == 480.0
    assert sum(got.values()) == 1250 + 310 + 900 + 200 + 1920 + 480


async def test_redirect_loops_stop_and_the_query_survives_a_redirect() -> None:
    from aifinops.sources.base import get_bytes

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/loop")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/prom/api/v1/query")

    async def query(request: web.Request) -> web.Response:
        return web.Response(text=request.query.get("query", "missing"))

    server = await serve({"/loop": loop, "/api/v1/query": moved, "/prom/api/v1/query": query})
    try:
        async with httpx.AsyncClient() as client:
            with pytest.raises(SourceError, match="HTTP 307"):
                await get_bytes(client, str(server.make_url("/loop")), timeout=5, max_bytes=100)
            body = await get_bytes(
                client,
                str(server.make_url("/api/v1/query")),
                timeout=5,
                max_bytes=100,
                params={"query": "up"},
            )
    finally:
        await server.close()
    assert body == b"up"


async def test_replicas_with_identical_pages_are_separate_counters() -> None:
    # Two LiteLLM replicas scraped directly, no target labels to tell them apart: the same
    # series text on both is still two counters (one would jump between their values).
    value = [100.0, 500.0]

    def make(i: int) -> Any:
        async def page(request: web.Request) -> web.Response:
            return web.Response(
                text=f'litellm_output_tokens_metric_total{{model="m",team="t"}} {value[i]}\n'
            )

        return page

    server = await serve({"/r0/metrics": make(0), "/r1/metrics": make(1)})
    targets = [{"url": str(server.make_url(f"/r{i}/metrics"))} for i in (0, 1)]
    state = TokenState()
    counted = []
    try:
        source = TokenSource(
            TokenSourceSettings(name="l", preset="litellm", mode="scrape", scrape_targets=targets),  # type: ignore[arg-type]
            run=run_cpu,
        )
        async with httpx.AsyncClient() as client:
            for step in range(3):
                got = await source.fetch(client)
                u = counter_increments(got, state, T0 + 30 * step, 3600, got.origins, 0.1)
                state = TokenState(last=u.last, seen_at=u.seen_at, source_seen_at=u.source_seen_at)
                counted.append(sum(d for _, d in u.increments))
                value[0] += 10
                value[1] += 5
    finally:
        await server.close()
    assert len({o.series for o in token_observations(got)}) == 2
    assert counted == [0.0, 15.0, 15.0]
