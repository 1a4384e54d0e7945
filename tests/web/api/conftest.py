"""The real app against the demo fakes with the demo's finance configuration
(``demo/finance.py``), on a settable clock: cluster-only (``start_demo_app``) or the full demo
with the vLLM and LiteLLM fakes (token traffic for routing and model switches)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from aifinops.demo.finance import finance_config
from aifinops.demo.run import DemoUpstreams, merge_config, start_demo_upstreams
from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from tests.web.conftest import T0, Clock, Demo, parse_page, start_demo_app

__all__ = ["T0", "FullDemo", "demo_finance", "start_finance_demo"]


def demo_finance(sim: Any, now: float = T0) -> dict[str, Any]:
    return finance_config(sim, now)


async def start_finance_demo(aiohttp_client: Any, **extra: Any) -> Demo:
    """Cluster fakes + the demo's finance sections (+ ``extra`` top-level sections)."""
    from aifinops.demo.cluster import ClusterSpec, SimCluster

    config = {**finance_config(SimCluster(ClusterSpec.demo()), T0), **extra}
    return await start_demo_app(aiohttp_client, config=config)


@dataclass
class FullDemo:
    upstreams: DemoUpstreams
    clock: Clock
    client: Any

    @property
    def sim(self) -> Any:
        return self.upstreams.cluster.sim

    async def refresh_at(self, now: float) -> dict[str, list[tuple[dict[str, str], float]]]:
        self.clock.now = now
        await self.client.app[REFRESHER].refresh_once()
        return parse_page(await (await self.client.get("/metrics")).text())


@pytest.fixture
async def finance_demo(aiohttp_client: Any) -> AsyncIterator[Demo]:
    d = await start_finance_demo(aiohttp_client)
    try:
        yield d
    finally:
        await d.upstreams.close()


@pytest.fixture
async def full_demo(aiohttp_client: Any) -> AsyncIterator[FullDemo]:
    clock = Clock(T0)
    ups = await start_demo_upstreams(clock=clock)
    config = merge_config(ups.config(), finance_config(ups.cluster.sim, T0))
    app = create_app(settings_from_mapping(config), clock=clock, run_loop=False)
    client = await aiohttp_client(app)
    try:
        yield FullDemo(ups, clock, client)
    finally:
        await ups.close()
