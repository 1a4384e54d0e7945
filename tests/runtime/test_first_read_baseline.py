"""A token source's first read only sets counter baselines, so the loop's first cycle
publishes without waiting for it (the coldest read at fleet scale) and reads it right after;
the cycle that read triggers uses it as the baseline, so no token is lost or counted twice:
the totals after 200 s are the demo's ground truth from the first read's time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from aiohttp.test_utils import TestServer

from aifinops.demo.llm import LlmDemo, llm_app
from aifinops.offload import run_cpu
from aifinops.settings import settings_from_mapping
from aifinops.sources.tokens import TokenSource
from aifinops.web.app import REFRESHER, create_app
from tests.demo.test_demo_llm import T0, Clock, FakeOpenCost
from tests.web.conftest import parse_page, series


class Counted:
    """A real token source that counts its fetches and the clock at each."""

    def __init__(self, inner: TokenSource, clock: Clock) -> None:
        self.inner, self.clock = inner, clock
        self.name, self.slot = inner.name, inner.slot
        self.local, self.targets = inner.local, inner.targets
        self.min_interval_seconds = inner.min_interval_seconds
        self.first_read_baseline = inner.first_read_baseline
        self.fetched_at: list[float] = []
        # Whether a report had been published when each fetch started.
        self.published: Callable[[], bool] = lambda: False
        self.after_publish: list[bool] = []

    async def fetch(self, client: httpx.AsyncClient) -> Any:
        self.fetched_at.append(self.clock())
        self.after_publish.append(self.published())
        return await self.inner.fetch(client)


async def test_first_cycle_publishes_before_the_token_read_and_nothing_is_lost(
    aiohttp_client: Any,
) -> None:
    clock = Clock()
    demo = LlmDemo(epoch=T0 - 800)
    server = TestServer(llm_app(demo, clock))
    await server.start_server()
    try:
        settings = settings_from_mapping(
            {
                "tokens": demo.tokens_config(str(server.make_url(""))),
                "tenancy": {
                    "pod_label_keys": ["aifinops.io/tenant"],
                    "namespace_label_keys": [],
                    "namespace_patterns": [{"regex": "^team-(?P<tenant>.+)$"}],
                },
            }
        )
        tokens = [Counted(TokenSource(s, run=run_cpu), clock) for s in settings.tokens.sources]
        assert tokens and all(t.first_read_baseline for t in tokens)
        sources = [(FakeOpenCost(), 5.0, 600.0)] + [(t, 5.0, 600.0) for t in tokens]
        client = await aiohttp_client(
            create_app(settings, sources=sources, clock=clock, run_loop=False)
        )
        refresher = client.app[REFRESHER]
        for t in tokens:
            t.published = lambda: refresher.snapshot.report is not None

        await refresher.refresh_once(defer=True)
        # Published with the cost series and without any token read yet.
        page = parse_page(await (await client.get("/metrics")).text())
        assert page["aifinops_tenant_cost_usd_per_hour"]
        assert not series(page, "aifinops_tokens_total")
        await refresher.settle_deferred()
        assert [t.fetched_at for t in tokens] == [[T0]] * len(tokens)
        assert all(t.after_publish == [True] for t in tokens)  # read after the publish

        # The cycle the landed read triggers uses it, without a second read.
        await refresher.refresh_once(defer=True)
        assert [t.fetched_at for t in tokens] == [[T0]] * len(tokens)
        for i in range(1, 21):
            clock.now = T0 + 10 * i
            await refresher.refresh_once(defer=True)
        assert [len(t.fetched_at) for t in tokens] == [21] * len(tokens)
        page = parse_page(await (await client.get("/metrics")).text())
        truth = demo.truth(T0 + 200).minus(demo.truth(T0))
        expected = {
            (model, provider, tenant, token_type): n
            for (tenant, model, provider, token_type), n in truth.tokens.items()
        }
        assert expected
        assert series(page, "aifinops_tokens_total") == expected
    finally:
        await server.close()
