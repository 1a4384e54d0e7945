"""Measured latency in routing, on the full demo: the p95 of the self-hosted model comes from
the fake vLLM's own e2e latency histogram (checked against a hand calculation from the
fake's bucket counts), reaches the routing series and ``/api/v1/routing/optimize`` as
``latency_source: measured``, and a latency source that goes down never blocks routing: its
last figures stay until they are stale, then the configured ones apply."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.finance import finance_config
from aifinops.demo.llm import (
    EXPECTED_P95_SECONDS,
    LATENCY_METRIC,
    SELF_HOSTED_MODEL,
    SELF_HOSTED_PROVIDER,
    bundled_prices,
)
from aifinops.demo.run import DemoUpstreams, demo_settings, merge_config, start_demo_upstreams
from aifinops.settings import Settings, settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from tests.web.conftest import T0, Clock, parse_page, series

SOURCE = "latency:vllm"
CONFIGURED_P95 = {"gpt-4o": 4.0, "gpt-4o-mini": 2.0, SELF_HOSTED_MODEL: 1.5}  # search-answers
Page = dict[str, list[tuple[dict[str, str], float]]]


class Rig:
    def __init__(self, ups: DemoUpstreams, clock: Clock, client: Any) -> None:
        self.ups, self.clock, self.client = ups, clock, client

    async def refresh_at(self, now: float) -> Page:
        self.clock.now = now
        await self.client.app[REFRESHER].refresh_once()
        return parse_page(await (await self.client.get("/metrics")).text())

    async def optimize(self, workload: str) -> dict[str, Any]:
        resp = await self.client.post("/api/v1/routing/optimize", json={"workload": workload})
        assert resp.status == 200
        out: dict[str, Any] = await resp.json()
        return out

    async def fake_buckets(self, pod: str) -> dict[float, float]:
        """The fake vLLM pod's cumulative bucket counts, read as Prometheus would."""
        resp = await self.client.session.get(f"{self.ups.llm_url}/vllm/{pod}/metrics")
        text = await resp.text()
        out: dict[float, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == f"{LATENCY_METRIC}_bucket":
                    out[float(s.labels["le"])] = s.value
        return out


async def start_rig(aiohttp_client: Any, **latency: Any) -> Rig:
    clock = Clock(T0)
    ups = await start_demo_upstreams(clock=clock)
    config = merge_config(ups.config(), finance_config(ups.cluster.sim, T0))
    config["latency"]["sources"][0].update(latency)
    for token_source in config["tokens"]["sources"]:
        # the vLLM fault below takes the token source down too: keep its counters in use
        token_source["stale_after_seconds"] = 100_000
    app = create_app(settings_from_mapping(config), clock=clock, run_loop=False)
    return Rig(ups, clock, await aiohttp_client(app))


@pytest.fixture
async def rig(aiohttp_client: Any) -> AsyncIterator[Rig]:
    r = await start_rig(aiohttp_client, stale_after_seconds=120)
    try:
        yield r
    finally:
        await r.ups.close()


def hand_p95(buckets: dict[float, float]) -> float:
    """PromQL's histogram_quantile(0.95, …), written out: find the bucket holding rank
    0.95 × total and interpolate linearly inside it."""
    bounds = sorted(buckets)
    rank = 0.95 * buckets[math.inf]
    lower, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            return lower + (le - lower) * (rank - below) / (buckets[le] - below)
        lower, below = le, buckets[le]
    raise AssertionError("rank beyond +Inf")


def blended(model: str, mix: tuple[float, float] = (0.8, 0.2)) -> float:
    p = bundled_prices()[model]
    return (mix[0] * p["input_cost_per_token"] + mix[1] * p["output_cost_per_token"]) * 1e6


def minmax(value: float, lo: float, hi: float) -> float:
    return 1.0 if hi <= lo else (hi - value) / (hi - lo)


def search_answers_scores(page: Page, latency: dict[str, float]) -> dict[str, float]:
    """search-answers' scores by hand: weights cost 0.6, quality 0.3, latency 0.1; token mix
    0.8/0.2; the self-hosted model at its measured price from the page."""
    measured = series(page, "aifinops_model_cost_per_million_tokens_usd", model=SELF_HOSTED_MODEL)
    price_in = next(v for k, v in measured.items() if "input" in k and "measured" in k)
    price_out = next(v for k, v in measured.items() if "output" in k and "measured" in k)
    costs = {
        "gpt-4o": blended("gpt-4o"),
        "gpt-4o-mini": blended("gpt-4o-mini"),
        SELF_HOSTED_MODEL: 0.8 * price_in + 0.2 * price_out,
    }
    quality = {"gpt-4o": 0.9, "gpt-4o-mini": 0.84, SELF_HOSTED_MODEL: 0.8}
    clo, chi = min(costs.values()), max(costs.values())
    llo, lhi = min(latency.values()), max(latency.values())
    return {
        m: 0.6 * minmax(costs[m], clo, chi) + 0.3 * quality[m] + 0.1 * minmax(latency[m], llo, lhi)
        for m in costs
    }


async def test_measured_p95_is_the_fakes_histogram_and_drives_routing(rig: Rig) -> None:
    pods = rig.ups.llm.pods
    await rig.refresh_at(T0 + 60)  # the first reading of each series is its baseline
    before = {pod: await rig.fake_buckets(pod) for pod in pods}
    page = await rig.refresh_at(T0 + 660)
    after = {pod: await rig.fake_buckets(pod) for pod in pods}

    # the window (300 s) reaches back to the newest reading at or before its start: T0 + 60
    increase = {le: math.fsum(after[p][le] - before[p][le] for p in pods) for le in after[pods[0]]}
    assert increase[math.inf] == 2 * 20 * 10  # two pods, 20 requests a minute, 10 minutes
    want = hand_p95(increase)
    assert want == EXPECTED_P95_SECONDS == 2.375

    out = await rig.optimize("search-answers")
    by_model = {c["model"]: c for c in out["ranked"]}
    llama = by_model[SELF_HOSTED_MODEL]
    assert llama["provider"] == SELF_HOSTED_PROVIDER
    assert llama["latency_source"] == "measured"
    assert llama["p95_latency_seconds"] == want
    for model in ("gpt-4o", "gpt-4o-mini"):  # no histogram for API models: configured
        assert by_model[model]["latency_source"] == "config"
        assert by_model[model]["p95_latency_seconds"] == CONFIGURED_P95[model]

    # the routing series are scored with the measured p95, not the configured 1.5 s
    scores = {
        k[0]: v
        for k, v in series(page, "aifinops_routing_score", workload="search-answers").items()
    }
    measured = search_answers_scores(page, {**CONFIGURED_P95, SELF_HOSTED_MODEL: want})
    configured = search_answers_scores(page, CONFIGURED_P95)
    assert scores == pytest.approx(measured, rel=1e-12)
    assert scores[SELF_HOSTED_MODEL] != pytest.approx(configured[SELF_HOSTED_MODEL], rel=1e-3)
    assert {c["model"]: c["score"] for c in out["ranked"]} == scores
    assert series(page, "aifinops_source_up", source=SOURCE) == {(): 1.0}

    # support-chat leaves the self-hosted model out on quality alone, not on latency
    (excluded,) = (await rig.optimize("support-chat"))["excluded"]
    assert excluded["reasons"] == ["quality 0.74 is below min_quality 0.8"]


async def test_the_restart_of_a_pod_inside_the_window_changes_nothing(rig: Rig) -> None:
    # pod 1 is drained from 840 s and restarted at 900 s (its counters back to zero)
    for t in (600, 780, 870, 930, 990):
        await rig.refresh_at(T0 + t)
    out = await rig.optimize("search-answers")
    llama = next(c for c in out["ranked"] if c["model"] == SELF_HOSTED_MODEL)
    assert (llama["latency_source"], llama["p95_latency_seconds"]) == ("measured", 2.375)
    window = rig.client.app[REFRESHER]._runtimes[-1].source.window
    # every request since the baseline, the newest reading at or before 990 − 300 (600 s):
    # pod 0's, and pod 1's before its restart (it stopped at 840 s) and after it
    total = sum(delta[-1] for _, delta in window.increases()[SELF_HOSTED_MODEL])
    llm = rig.ups.llm
    pod0, pod1 = llm.pods

    def requests(pod: str, t: float) -> int:
        return llm.latency_buckets(pod, T0 + t)[math.inf]

    want = (requests(pod0, 990) - requests(pod0, 600)) + (
        requests(pod1, 870) - requests(pod1, 600) + requests(pod1, 990)
    )
    assert requests(pod1, 990) < requests(pod1, 870)  # the restart is in the window
    assert total == want > 0


async def test_a_down_latency_source_never_blocks_routing(rig: Rig) -> None:
    await rig.refresh_at(T0 + 60)
    await rig.refresh_at(T0 + 660)

    rig.ups.faults.set("vllm", "error500")
    page = await rig.refresh_at(T0 + 720)
    assert series(page, "aifinops_source_up", source=SOURCE) == {(): 0.0}
    errors = series(page, "aifinops_source_errors_total", source=SOURCE)
    assert {k: v for k, v in errors.items() if v} == {("http_status",): 1.0}
    assert series(page, "aifinops_source_age_seconds", source=SOURCE) == {(): 60.0}
    llama = await llama_in_search_answers(rig)
    assert (llama["latency_source"], llama["p95_latency_seconds"]) == ("measured", 2.375)

    # past stale_after_seconds (120) the figures are dropped: the configured p95 applies
    page = await rig.refresh_at(T0 + 781)
    assert series(page, "aifinops_source_stale", source=SOURCE) == {(): 1.0}
    llama = await llama_in_search_answers(rig)
    assert (llama["latency_source"], llama["p95_latency_seconds"]) == ("config", 1.5)
    assert series(page, "aifinops_routing_score", workload="search-answers")

    rig.ups.faults.reset("vllm")
    page = await rig.refresh_at(T0 + 841)
    assert series(page, "aifinops_source_up", source=SOURCE) == {(): 1.0}
    llama = await llama_in_search_answers(rig)
    assert (llama["latency_source"], llama["p95_latency_seconds"]) == ("measured", 2.375)


async def test_too_few_requests_in_the_window_means_the_configured_p95(aiohttp_client: Any) -> None:
    r = await start_rig(aiohttp_client, min_requests=1000)
    try:
        await r.refresh_at(T0 + 60)
        page = await r.refresh_at(T0 + 660)  # 400 requests in the window
        assert series(page, "aifinops_source_up", source=SOURCE) == {(): 1.0}
        llama = await llama_in_search_answers(r)
        assert (llama["latency_source"], llama["p95_latency_seconds"]) == ("config", 1.5)
    finally:
        await r.ups.close()


async def llama_in_search_answers(rig: Rig) -> dict[str, Any]:
    out = await rig.optimize("search-answers")
    found: dict[str, Any] = next(c for c in out["ranked"] if c["model"] == SELF_HOSTED_MODEL)
    return found


async def test_the_demo_turns_the_latency_source_on() -> None:
    ups = await start_demo_upstreams()
    try:
        s = demo_settings(Settings(), ups)
    finally:
        await ups.close()
    (source,) = s.latency.sources
    assert source.mode == "scrape" and source.provider == SELF_HOSTED_PROVIDER
    assert [t.url for t in source.scrape_targets] == [
        f"{ups.llm_url}/vllm/{pod}/metrics" for pod in ups.llm.pods
    ]
    # the provider the routing candidates give the self-hosted model
    providers = {
        c["provider"]
        for w in finance_config(ups.cluster.sim, T0)["routing"]["workloads"]
        for c in w["candidates"]
        if c["model"] == SELF_HOSTED_MODEL
    }
    assert providers == {source.provider}
