"""``aifinops-exporter --demo``: start the fake upstreams and point the real sources at them.

The fakes: dcgm-exporter, a Prometheus API and OpenCost over the simulated cluster
(``demo/cluster/``, with HAMi-shared and per-process GPUs and HAMi's pages), plus a vLLM
serving a self-hosted model from the cluster's ``llm-serving`` pods and a LiteLLM proxy
routing tenants to API models (``demo/llm.py``).
The vLLM pages also feed the routing's measured latency (``latency:`` section, scrape mode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.cluster.energy_truth import DEMO_OWNED_GPUS, DEMO_PRICES, energy_config
from aifinops.demo.finance import finance_config
from aifinops.demo.llm import LLM_UPSTREAMS, SERVING_PODS, LlmDemo, llm_app
from aifinops.demo.upstreams import FaultSwitch, Upstreams, start_upstreams
from aifinops.settings import Settings, settings_from_mapping

Clock = Callable[[], float]

# Short windows so a newcomer sees idle GPUs within a minute, not fifteen.
DEMO_OVERRIDES: dict[str, Any] = {
    "refresh": {"interval_seconds": 10},
    "idle_gpu": {"window_seconds": 60},
}


@dataclass
class DemoUpstreams:
    """Everything the demo started; ``close()`` stops it all."""

    cluster: Upstreams
    llm: LlmDemo
    llm_url: str
    _llm_runner: web.AppRunner

    @property
    def faults(self) -> FaultSwitch:
        """The switch of all five fakes (``dcgm``, ``prometheus``, ``opencost``, ``vllm``,
        ``litellm``)."""
        return self.cluster.faults

    async def close(self) -> None:
        self.cluster.faults.closing()
        await self._llm_runner.cleanup()
        await self.cluster.close()

    def config(self, **cluster_kwargs: Any) -> dict[str, Any]:
        """Exporter configuration sections for these fakes."""
        data = self.cluster.exporter_config(**cluster_kwargs)
        data["tokens"] = self.llm.tokens_config(self.llm_url)
        # Measured p95 of the self-hosted model from the vLLM pages: its routing candidates
        # show latency_source "measured", the API models their configured figures.
        data["latency"] = self.llm.latency_config(self.llm_url)
        return data


async def start_demo_upstreams(
    spec: ClusterSpec | None = None, clock: Clock = time.time, host: str = "127.0.0.1"
) -> DemoUpstreams:
    # The demo shows HAMi-shared and per-process GPUs beside the rest (demo/shared_pools.py).
    sim = SimCluster(spec or ClusterSpec.demo(shared_gpus=True))
    # One fault switch for all five fakes: tests turn any of them bad at runtime.
    faults = FaultSwitch(extra=LLM_UPSTREAMS)
    cluster = await start_upstreams(sim, host=host, clock=clock, faults=faults)
    llm = LlmDemo(epoch=clock(), pods=sim.spec.serving_pods or SERVING_PODS)
    runner = web.AppRunner(llm_app(llm, clock=clock, faults=faults), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return DemoUpstreams(cluster, llm, f"http://{host}:{port}", runner)


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mappings recursively."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def owned_config(sim: SimCluster) -> dict[str, Any]:
    """The ``gpu_pricing`` (owned GPUs, the docs' worked example among them) and ``energy``
    sections for a cluster with owned pools (``spec.energy``), else nothing. The energy
    prices are the answer key's (``energy_truth.DEMO_PRICES``, in UTC like the demo's
    budgets); two tenants have energy budgets."""
    if sim.spec.energy is None:
        return {}
    budgets = [
        {"tenant": "research", "energy_usd": 300, "carbon_kg": 900},
        {"tenant": "search", "energy_usd": 150},
    ]
    return {
        "gpu_pricing": {"owned": {"gpus": [dict(g) for g in DEMO_OWNED_GPUS]}},
        "energy": energy_config(DEMO_PRICES, budgets=budgets),
    }


def demo_settings(base: Settings, upstreams: DemoUpstreams, now: float | None = None) -> Settings:
    """``base`` with sources, tenancy and token analytics taken from the running fakes, and
    the demo's budgets, initiatives, routing, recommendations, owned GPU prices and energy
    for the sections ``base`` does not set itself (a user's ``--config`` wins over them)."""
    sim = upstreams.cluster.sim
    finance = finance_config(sim, time.time() if now is None else now)
    return settings_for_fakes(base, upstreams.config(), {**finance, **owned_config(sim)})


def settings_for_fakes(base: Settings, fakes: dict[str, Any], finance: dict[str, Any]) -> Settings:
    """:func:`demo_settings` from the fakes' configuration sections and the demo's finance,
    owned-price and energy sections (as the fakes' own process gives them:
    :mod:`aifinops.demo.child`)."""
    data: dict[str, Any] = base.model_dump(mode="python", exclude_unset=True)
    demo = merge_config(DEMO_OVERRIDES, json.loads(json.dumps(fakes)))
    demo.update({k: v for k, v in finance.items() if k not in data})
    for source in demo["sources"].values():
        source["enabled"] = True
    return settings_from_mapping(merge_config(data, demo), "demo configuration")
