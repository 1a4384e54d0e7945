"""The real app factory against the demo simulator's fake upstreams, on a settable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.upstreams import Upstreams, start_upstreams
from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app

T0 = 1_750_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Demo:
    sim: SimCluster
    upstreams: Upstreams
    clock: Clock
    client: Any

    async def refresh(self) -> None:
        await self.client.app[REFRESHER].refresh_once()

    async def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        resp = await self.client.get("/metrics")
        assert resp.status == 200
        return parse_page(await resp.text())


def parse_page(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def series(page, name: str, **match: str) -> dict[tuple[str, ...], float]:
    """Samples of ``name`` whose labels include ``match``, keyed by the other label values."""
    out = {}
    for labels, value in page.get(name, []):
        if all(labels.get(k) == v for k, v in match.items()):
            rest = tuple(v for k, v in sorted(labels.items()) if k not in match)
            out[rest] = value
    return out


async def start_demo_app(
    aiohttp_client, spec=None, config: dict[str, Any] | None = None, **cfg_kwargs: Any
) -> Demo:
    clock = Clock()
    sim = SimCluster(spec or ClusterSpec.demo())
    upstreams = await start_upstreams(sim, clock=clock)
    data = upstreams.exporter_config(**cfg_kwargs)
    for key, value in (config or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    settings = settings_from_mapping(data)
    app = create_app(settings, clock=clock, run_loop=False)
    client = await aiohttp_client(app)
    return Demo(sim, upstreams, clock, client)


@pytest.fixture
async def demo(aiohttp_client) -> AsyncIterator[Demo]:
    d = await start_demo_app(aiohttp_client)
    try:
        yield d
    finally:
        await d.upstreams.close()
