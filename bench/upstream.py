"""The fake upstreams of one benchmark size, in their own process.

``python -m bench.upstream --gpus N [--tokens]`` builds ``SimCluster(ClusterSpec.scaled(N))``
(and, with ``--tokens``, scaled LLM traffic), starts the test suite's fake dcgm-exporter,
Prometheus and OpenCost (and the fake vLLM/LiteLLM) on 127.0.0.1, fetches every answer once
(:func:`warm`), prints one JSON line with the exporter configuration, and serves until its
stdin closes.

Why a process of its own: the fakes render a payload per request (about 2 s of CPU for the
10k-GPU OpenCost answer), which on the exporter's event loop would be counted as the
exporter's stall. Here every distinct request is rendered once per *phase* and the bytes are
kept; the fakes' clock alternates between two phases 30 s apart, so consecutive refreshes see
the same series with new values, as they would in a cluster. A request for an explicit
window (``window=<start>,<end>``: OpenCost's month-to-date query, asked by the exporter with
its clock at :data:`T0`) does not depend on the phase and is rendered once: at 10k GPUs that
is ~30 daily sets aggregated by tenant (about 20 s of CPU, once, before anything is timed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiohttp import web

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.llm import SELF_HOSTED_MODEL, LlmDemo, Traffic, llm_app
from aifinops.demo.upstreams import (
    FaultSwitch,
    Upstreams,
    dcgm_app,
    exporter_config,
    opencost_app,
    prometheus_app,
)
from aifinops.logs import configure_logging

T0 = 1_750_000_000.0
PHASE_SECONDS = 30.0
# Gauge pages (DCGM, OpenCost) alternate between two phases. Counter pages (vLLM, LiteLLM)
# move forward one phase per request, up to COUNTER_PHASES, then stay (a counter must not go
# back); all their phases are rendered on the first request, before anything is timed.
GAUGE_PHASES = 2
COUNTER_PHASES = 16
COUNTER_PATHS = ("/vllm/", "/litellm/")
# Models of the synthetic LLM fleet that a configured override prices; every tenant sends
# tokens to MODELS_PER_TENANT of them (so ~50k token series at 2,000 tenants).
MODELS_PER_TENANT = 8
UNPRICED_MODELS = 3


class PhaseClock:
    """The fakes' clock: ``T0 + phase × 30 s``."""

    def __init__(self) -> None:
        self.phase = 0

    def __call__(self) -> float:
        return T0 + self.phase * PHASE_SECONDS


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def caching_middleware(clock: PhaseClock) -> Any:
    """Render each distinct request once per phase; answer in turn from the kept bytes."""
    cache: dict[tuple[str, str], list[tuple[int, bytes, str]]] = {}
    served: Counter[tuple[str, str]] = Counter()

    @web.middleware
    async def cached(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = (request.path, "&".join(sorted(f"{k}={v}" for k, v in request.query.items())))
        counters = request.path.startswith(COUNTER_PATHS)
        fixed = "," in request.query.get("window", "")  # an explicit window: no phase
        bodies = cache.get(key)
        if bodies is None:
            bodies = []
            for phase in range(COUNTER_PHASES if counters else 1 if fixed else GAUGE_PHASES):
                clock.phase = phase
                resp = await handler(request)
                assert isinstance(resp, web.Response) and isinstance(resp.body, bytes)
                bodies.append((resp.status, resp.body, resp.headers["Content-Type"]))
            cache[key] = bodies
        n = served[key]
        served[key] += 1
        status, body, content_type = bodies[
            min(n, len(bodies) - 1) if counters else n % len(bodies)
        ]
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return cached


def model_count(n_gpus: int) -> int:
    """API models in the synthetic LLM fleet: 300 at 10k GPUs, at least 8."""
    return max(MODELS_PER_TENANT, min(300, n_gpus * 3 // 100))


def scaled_traffic(sim: SimCluster, n_gpus: int) -> tuple[tuple[Traffic, ...], list[str]]:
    """Every tenant sends tokens to MODELS_PER_TENANT API models (a few unpriced) and a
    tenth of them also to the self-hosted model. Returns the traffic and the priced models."""
    models = [f"bench-llm-{i:03d}" for i in range(model_count(n_gpus))]
    priced = models[:-UNPRICED_MODELS]
    traffic: list[Traffic] = []
    for t, tenant in enumerate(sim.spec.tenants):
        for j in range(MODELS_PER_TENANT):
            model = models[(t * 7 + j * 31) % len(models)]
            # No price key: the fake's own spend series stays 0; the exporter prices these
            # models from the configured overrides.
            traffic.append(
                Traffic(tenant, model, "bench", 10 + j, 2 + j % 3, 4 * (j % 2), None, False)
            )
        if t % 10 == 0:
            traffic.append(
                Traffic(tenant, SELF_HOSTED_MODEL, "vllm", 20, 10, 0, None, self_hosted=True)
            )
    return tuple(traffic), priced


def tokens_config(demo: LlmDemo, base_url: str, priced: list[str]) -> dict[str, Any]:
    cfg = demo.tokens_config(base_url)
    cfg["push"] = {"enabled": False}
    cfg["max_models"] = 1000
    cfg["prices"] = {
        "overrides": {
            m: {
                "input_usd_per_million_tokens": 1.0 + i % 7,
                "output_usd_per_million_tokens": 4.0 + i % 5,
                "cached_input_usd_per_million_tokens": 0.1,
                "provider": "bench",
            }
            for i, m in enumerate(priced)
        }
    }
    return cfg


async def serve(n_gpus: int, tokens: bool) -> None:
    # Logs go to stderr: stdout carries the JSON line the parent reads.
    configure_logging("warning")
    sim = SimCluster(ClusterSpec.scaled(n_gpus))
    clock = PhaseClock()
    faults = FaultSwitch()
    factories = [dcgm_app, prometheus_app, opencost_app]
    apps = [f(sim, faults, clock) for f in factories]
    demo: LlmDemo | None = None
    priced: list[str] = []
    if tokens:
        traffic, priced = scaled_traffic(sim, n_gpus)
        # Self-hosted rates must be even (two vLLM pods share them).
        demo = LlmDemo(epoch=T0 - 3600.0, traffic=traffic)
        apps.append(llm_app(demo, clock))
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    for app in apps:
        app.middlewares.append(caching_middleware(clock))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    upstreams = Upstreams(sim, faults, urls[0], urls[1], urls[2])
    config = exporter_config(upstreams)
    if demo is not None:
        config["tokens"] = tokens_config(demo, urls[3], priced)
    await warm(config)
    info = {
        "config": config,
        "dcgm_url": urls[0],
        "gpus": sim.spec.n_gpus,
        "tenants": len(sim.spec.tenants),
        "models": model_count(n_gpus) if tokens else 0,
    }
    print(json.dumps(info), flush=True)
    # Serve until the parent closes our stdin (or dies).
    await asyncio.to_thread(sys.stdin.buffer.read)
    for runner in reversed(runners):
        await runner.cleanup()


async def warm(config: dict[str, Any]) -> None:
    """Fetch every source the exporter will read, with the exporter's own source objects,
    so that every answer is rendered before anything is timed (here: the exporter's process
    never holds this warm-up's data, so its peak RSS is its own)."""
    from aifinops.sources.opencost import OpenCostMonthSource
    from bench.size import bench_settings, bench_sources

    settings = bench_settings(config)
    async with httpx.AsyncClient() as client:
        for source, _, _ in bench_sources(settings):
            if isinstance(source, OpenCostMonthSource):
                # The fake renders ~46 daily sets at 10k GPUs (~1 s of CPU each): longer than
                # the source's own timeout. Ask each piece once with patience; the source
                # then reads the cache.
                url = f"{settings.sources.opencost.url}/allocation/compute"
                for _, _, params in source.pieces(T0):
                    (await client.get(url, params=params, timeout=900)).raise_for_status()
            await source.fetch(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--tokens", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args.gpus, args.tokens))


if __name__ == "__main__":
    main()
