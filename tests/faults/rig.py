"""The whole exporter (real app, real sources) against all five demo fakes, with their fault
switch, a settable clock and helpers that read the page the way an operator would."""

from __future__ import annotations

import asyncio
import gc
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from aifinops.assemble import build_sources
from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.demo.llm import LLM_UPSTREAMS, SERVING_PODS, LlmDemo, llm_app
from aifinops.demo.run import merge_config
from aifinops.demo.upstreams import FaultSwitch, Upstreams, start_upstreams
from aifinops.refresh import Refresher
from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from tests.faults.hostile import HostileProxy
from tests.web.conftest import T0, Clock, parse_page

# Short enough that the slow faults cost little wall time, long enough for a loaded CI core.
TIMEOUT = 0.3
OTHER_TIMEOUT = 5.0
STALE_AFTER = 300.0
# Over every fake's real answer; the month-to-date query (daily sets since the month start:
# ~8 MB) gets MONTH_MAX_BYTES when a test includes it.
MAX_BYTES = 1024 * 1024
HUGE = 4 * 1024 * 1024
MONTH_MAX_BYTES = 16 * 1024 * 1024

LOCAL = ("llm_prices", "tokens:push")
Page = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True, slots=True)
class Target:
    """One source under test: the fake that goes bad, the exporter source it feeds, and how
    the exporter is configured for it."""

    upstream: str
    source: str
    dcgm_mode: str = "prometheus"


TARGETS: dict[str, Target] = {
    "dcgm-prometheus": Target("prometheus", "dcgm", "prometheus"),
    "dcgm-scrape": Target("dcgm", "dcgm", "scrape"),
    "opencost": Target("opencost", "opencost"),
    "vllm": Target("vllm", "tokens:vllm"),
    "litellm": Target("litellm", "tokens:litellm"),
}


class LoopThread:
    """An event loop in a daemon thread, for fakes that must not share the exporter's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Fakes:
    """The five demo fakes, as real upstreams are: other processes. The cluster fakes and the
    LLM fakes each run on their own loop in a thread, so a fake busy building a large answer
    (OpenCost's month of daily sets) stalls neither the exporter nor the other fakes (which
    would turn their fetches into timeouts). Each group has its own fault switch;
    :meth:`set` and :meth:`reset` pick the right one."""

    def __init__(self, clock: Clock) -> None:
        self._cluster_loop = LoopThread()
        self._llm_loop = LoopThread()
        self.cluster: Upstreams = self._cluster_loop.call(
            start_upstreams(SimCluster(ClusterSpec.demo()), clock=clock)
        )
        self.llm = LlmDemo(epoch=clock(), pods=self.cluster.sim.spec.serving_pods or SERVING_PODS)
        self.llm_faults = FaultSwitch(extra=LLM_UPSTREAMS)
        self._llm_runner, self.llm_url = self._llm_loop.call(self._start_llm(clock))

    async def _start_llm(self, clock: Clock) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(llm_app(self.llm, clock, self.llm_faults), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=1.0)
        await site.start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

    def _switch(self, upstream: str) -> FaultSwitch:
        return self.llm_faults if upstream in LLM_UPSTREAMS else self.cluster.faults

    def set(self, upstream: str, mode: str) -> None:
        self._switch(upstream).set(upstream, mode)

    def reset(self, upstream: str) -> None:
        self._switch(upstream).reset(upstream)

    def config(
        self,
        dcgm_mode: str,
        extra: dict[str, Any] | None = None,
        short_timeout: str | None = None,
    ) -> Any:
        """The exporter configuration for these fakes. ``short_timeout`` names the one source
        (``dcgm``, ``opencost``, ``tokens:vllm``, ...) that gets :data:`TIMEOUT`; the others get
        :data:`OTHER_TIMEOUT`, so a pause of the test process (a full garbage collection in a
        long session) cannot time them out."""
        data = self.cluster.exporter_config(dcgm_mode=dcgm_mode)  # type: ignore[arg-type]
        data["tokens"] = self.llm.tokens_config(self.llm_url)
        sections = [("dcgm", data["sources"]["dcgm"]), ("opencost", data["sources"]["opencost"])]
        sections += [(f"tokens:{t['name']}", t) for t in data["tokens"]["sources"]]
        for name, section in sections:
            section.update(
                timeout_seconds=TIMEOUT if name == short_timeout else OTHER_TIMEOUT,
                stale_after_seconds=STALE_AFTER,
                max_response_bytes=MAX_BYTES,
            )
        return merge_config(data, extra or {})

    def close(self) -> None:
        async def close_llm() -> None:
            self.llm_faults.closing()
            await self._llm_runner.cleanup()

        self._llm_loop.call(close_llm())
        self._cluster_loop.call(self.cluster.close())
        self._llm_loop.stop()
        self._cluster_loop.stop()


class Hostile:
    """A :class:`~tests.faults.hostile.HostileProxy` in front of the fake OpenCost, on a loop
    of its own; set :attr:`mode` from the test."""

    def __init__(self, target: str) -> None:
        self._loop = LoopThread()
        self.proxy = HostileProxy(target)
        self.url: str = self._loop.call(self.proxy.start())

    @property
    def mode(self) -> str:
        return self.proxy.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.proxy.mode = mode

    def close(self) -> None:
        self._loop.call(self.proxy.close())
        self._loop.stop()


@dataclass
class Rig:
    fakes: Fakes
    clock: Clock
    client: TestClient[Any, Any]
    app: web.Application
    hostile: Hostile | None = None

    @property
    def refresher(self) -> Refresher:
        return self.app[REFRESHER]

    async def refresh(self, at: float | None = None) -> None:
        if at is not None:
            self.clock.now = at
        await self.refresher.refresh_once()

    async def text(self) -> str:
        resp = await self.client.get("/metrics")
        assert resp.status == 200
        return await resp.text()

    async def page(self) -> Page:
        return parse_page(await self.text())

    async def close(self) -> None:
        if self.hostile is not None:
            await asyncio.to_thread(self.hostile.close)
        await asyncio.to_thread(self.fakes.close)


async def start_rig(
    aiohttp_client: Any,
    dcgm_mode: str = "prometheus",
    extra: dict[str, Any] | None = None,
    *,
    run_loop: bool = False,
    month: bool = False,
    short_timeout: str | None = None,
    hostile: bool = False,
    wrap: Callable[[Any], Any] | None = None,
) -> Rig:
    """The exporter on fresh fakes. ``month``: include OpenCost's month-to-date query, whose
    answer the fake takes about a second to build (left out unless a test is about it).
    ``short_timeout``: the source under test (see :meth:`Fakes.config`). ``hostile``: OpenCost
    is read through a :class:`Hostile` proxy (``rig.hostile.mode``). ``wrap``: applied to each
    configured source (a test's stand-in around the real one)."""
    gc.collect()  # not in the middle of a timed fetch
    clock = Clock(T0)
    fakes = await asyncio.to_thread(Fakes, clock)
    proxy: Hostile | None = None
    try:
        if hostile:
            proxy = await asyncio.to_thread(Hostile, fakes.cluster.opencost_url)
            extra = merge_config({"sources": {"opencost": {"url": proxy.url}}}, extra or {})
        if month:
            extra = merge_config(
                {"sources": {"opencost": {"max_response_bytes": MONTH_MAX_BYTES}}}, extra or {}
            )
        settings = settings_from_mapping(fakes.config(dcgm_mode, extra, short_timeout))
        sources = None
        if not month:
            # create_app adds the price list and the push store itself.
            sources = [
                s for s in build_sources(settings) if s[0].name not in ("opencost_month", *LOCAL)
            ]
        if wrap is not None:
            chosen = sources or [s for s in build_sources(settings) if s[0].name not in LOCAL]
            sources = [(wrap(s), t, st) for s, t, st in chosen]
        app = create_app(settings, clock=clock, run_loop=run_loop, sources=sources)
        client = await aiohttp_client(app)
    except BaseException:
        if proxy is not None:
            await asyncio.to_thread(proxy.close)
        await asyncio.to_thread(fakes.close)
        raise
    return Rig(fakes, clock, client, app, proxy)


# --- reading the page ------------------------------------------------------------------------


def value(page: Page, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` with ``labels`` (``None`` when absent)."""
    found = [v for lbl, v in page.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def errors(page: Page, source: str) -> dict[str, float]:
    return {
        lbl["reason"]: v
        for lbl, v in page.get("aifinops_source_errors_total", [])
        if lbl["source"] == source and v
    }


def money_problems(page: Page) -> list[str]:
    """Every sample of a money series (``_usd`` in its name) that is negative or not finite."""
    return [
        f"{name}{labels} = {v}"
        for name, samples in page.items()
        if "_usd" in name
        for labels, v in samples
        if not math.isfinite(v) or v < 0
    ]


def money_series(page: Page) -> int:
    return sum(len(s) for name, s in page.items() if "_usd" in name)


async def metrics_latencies_during(rig: Rig, work: asyncio.Task[Any]) -> list[float]:
    """Scrape ``/metrics`` back to back while ``work`` runs; the latency of each scrape."""
    out: list[float] = []
    while not work.done():
        started = time.perf_counter()
        resp = await rig.client.get("/metrics")
        await resp.read()
        assert resp.status == 200
        out.append(time.perf_counter() - started)
        await asyncio.sleep(0.01)
    await work
    return out


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
