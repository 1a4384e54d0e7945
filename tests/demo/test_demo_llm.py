"""The demo's fake vLLM and LiteLLM through the real app, against the demo's ground truth.

A fake OpenCost source prices the two vLLM pods; the LiteLLM teams send tokens to API models
and to the self-hosted model; pod 1 is drained and restarted mid-run (a counter reset).
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from aifinops.demo.llm import (
    SELF_HOSTED_MODEL,
    SELF_HOSTED_PROVIDER,
    LlmDemo,
    LlmTruth,
    llm_app,
)
from aifinops.model.inputs import AllocationSet
from aifinops.model.llm_prices import PER_MILLION
from aifinops.offload import run_cpu
from aifinops.settings import settings_from_mapping
from aifinops.sources.base import Slot
from aifinops.sources.tokens import TokenSource
from aifinops.web.app import REFRESHER, create_app
from tests.model.builders import pod
from tests.tools import require_binary
from tests.web.conftest import parse_page, series

T0 = 1_750_000_000.0
WEIGHTS = {"input": 1.0, "cached_input": 0.1, "output": 4.0}
POD_COST = {"gpu_cost": 6.0, "cpu_cost": 0.75, "ram_cost": 0.25}  # USD over a 1 h window


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FakeOpenCost:
    """The two vLLM pods (tenant ``platform`` by pod label) and a search app pod."""

    name = "opencost"
    slot = Slot.ALLOCATIONS
    local = False
    min_interval_seconds = 0.0
    first_read_baseline = False
    targets = None

    async def fetch(self, client: httpx.AsyncClient) -> AllocationSet:
        return AllocationSet(
            1.0,
            (
                pod("llm-serving", "vllm-llama-0", {"aifinops_io_tenant": "platform"}, **POD_COST),
                pod("llm-serving", "vllm-llama-1", {"aifinops_io_tenant": "platform"}, **POD_COST),
                pod("team-search", "web", gpu_cost=1.0, cpu_cost=0.5),
            ),
        )


@dataclass
class Run:
    demo: LlmDemo
    clock: Clock
    client: Any
    pages: list[dict[str, Any]]
    texts: list[str]
    reports: list[Any]


@pytest.fixture
async def run(aiohttp_client) -> AsyncIterator[Run]:
    clock = Clock()
    demo = LlmDemo(epoch=T0 - 800)  # pod 1 drains at T0+40 and restarts at T0+100
    server = TestServer(llm_app(demo, clock))
    await server.start_server()
    try:
        cfg = demo.tokens_config(str(server.make_url("")))
        settings = settings_from_mapping(
            {
                "tokens": cfg,
                "tenancy": {
                    "pod_label_keys": ["aifinops.io/tenant"],
                    "namespace_label_keys": [],
                    "namespace_patterns": [{"regex": "^team-(?P<tenant>.+)$"}],
                },
            }
        )
        sources = [(FakeOpenCost(), 5.0, 600.0)] + [
            (TokenSource(s, run=run_cpu), 5.0, 600.0) for s in settings.tokens.sources
        ]
        client = await aiohttp_client(
            create_app(settings, sources=sources, clock=clock, run_loop=False)
        )
        r = Run(demo, clock, client, [], [], [])
        for i in range(21):  # T0 .. T0+200 every 10 s
            clock.now = T0 + 10 * i
            await client.app[REFRESHER].refresh_once()
            text = await (await client.get("/metrics")).text()
            r.texts.append(text)
            r.pages.append(parse_page(text))
            r.reports.append(client.app[REFRESHER].snapshot.report)
        yield r
    finally:
        await server.close()


def truth(r: Run) -> LlmTruth:
    return r.demo.truth(T0 + 200).minus(r.demo.truth(T0))


async def test_tokens_per_tenant_match_ground_truth_across_a_vllm_restart(run):
    page = run.pages[-1]
    got = series(page, "aifinops_tokens_total")
    expected = {
        (model, provider, tenant, token_type): n
        for (tenant, model, provider, token_type), n in truth(run).tokens.items()
    }
    assert got == expected
    # vLLM's restart (drain from T0+40, restart at T0+100) neither lost nor doubled served
    # tokens: the served rate over every full 60 s window, before, across and after it, is
    # the ground truth's constant rate.
    per_s = {k: v / 200 for k, v in truth(run).served.items()}
    for report in run.reports[6:]:
        served = report.tokens.self_hosted[SELF_HOSTED_MODEL]
        assert served.served_rate.keys() == per_s.keys()
        for k, rate in served.served_rate.items():
            assert rate == pytest.approx(per_s[k] * 3600, rel=1e-12), (report.now, k)


async def test_api_token_dollars_are_exact(run):
    page = run.pages[-1]
    got = series(page, "aifinops_token_cost_usd_total")
    for (tenant, model, provider, token_type), usd in truth(run).api_cost.items():
        assert got[(model, provider, tenant, token_type)] == pytest.approx(usd, rel=1e-9)
    # Per tenant: LiteLLM's team id, never its display name; the key of no team (team="None")
    # is __unallocated__.
    for tenant in ("search", "chatbot", "ads", "__unallocated__"):
        total = series(page, "aifinops_tenant_cost_usd_total", tenant=tenant, resource="tokens")
        assert total[()] == pytest.approx(truth(run).tenant_api_cost(tenant), rel=1e-9)
    assert series(page, "aifinops_unpriced_tokens_total") == {
        ("acme-llm-pro", "unknown"): sum(truth(run).unpriced.values())
    }
    assert ("acme-llm-pro", "unknown", "research", "input") not in got


async def test_measured_price_and_charge_back_match_ground_truth(run):
    page = run.pages[-1]
    serving_usd_h = 2 * (POD_COST["gpu_cost"] + POD_COST["cpu_cost"] + POD_COST["ram_cost"])
    d = run.demo.weighted_token_rate(WEIGHTS)
    prices = series(page, "aifinops_model_cost_per_million_tokens_usd", source="measured")
    for k, w in WEIGHTS.items():
        assert prices[(SELF_HOSTED_MODEL, SELF_HOSTED_PROVIDER, k)] == pytest.approx(
            serving_usd_h * w / d * PER_MILLION, rel=1e-9
        )
    eq = series(page, "aifinops_model_api_equivalent_cost_per_million_tokens_usd")
    assert eq[(SELF_HOSTED_MODEL, SELF_HOSTED_PROVIDER, "output")] == pytest.approx(0.6)
    rates = series(page, "aifinops_tenant_cost_usd_per_hour")
    shares = run.demo.weighted_shares(WEIGHTS)
    for resource, per_pod in (("gpu", 6.0), ("cpu", 0.75), ("ram", 0.25)):
        for tenant, share in shares.items():
            own = {"search": {"gpu": 1.0, "cpu": 0.5}}.get(tenant, {}).get(resource, 0.0)
            assert rates[(resource, tenant)] == pytest.approx(own + 2 * per_pod * share, rel=1e-9)
        # everything the serving tenant's pods cost moved to the tenants that sent tokens
        assert rates[(resource, "platform")] == pytest.approx(0.0, abs=1e-9)
    cluster = series(page, "aifinops_cluster_cost_usd_per_hour")
    for resource in ("gpu", "cpu", "ram"):
        assert math.fsum(v for (r, _), v in rates.items() if r == resource) == pytest.approx(
            cluster[(resource,)], rel=1e-12
        )


async def test_no_personal_values_and_promtool_is_clean(run):
    text = run.texts[-1]
    for needle in ("hashed_api_key", "alice@example.com", "user_email", "key-0", " Team", "None"):
        assert needle not in text
    promtool = require_binary("promtool")
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b""


async def test_every_refresh_has_monotonic_counters(run):
    prev: dict[Any, float] = {}
    for page in run.pages:
        for name in (
            "aifinops_tokens_total",
            "aifinops_token_cost_usd_total",
            "aifinops_unpriced_tokens_total",
        ):
            for key, value in series(page, name).items():
                assert value >= prev.get((name, key), 0.0) - 1e-12, (name, key)
                prev[(name, key)] = value
