"""A bounded load test on 127.0.0.1: a fixed number of requests to ``/metrics`` and the JSON
API while the refresh loop runs every 100 ms and OpenCost flaps. No error answers, gross
latency bounds (the figures are printed, not asserted tightly), and memory flat across
hundreds of refresh cycles."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.faults.rig import Rig, start_rig
from tests.load.conftest import RESULTS
from tests.web.conftest import T0

REQUESTS = {"/metrics": 600, "/readyz": 200, "/api/v1/summary": 200}
CONCURRENCY = 8
REFRESH_INTERVAL = 0.1


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def churn(rig: Rig, stop: asyncio.Event) -> int:
    """Move the clock and flap OpenCost until ``stop``; the number of flips."""
    flips = 0
    while not stop.is_set():
        rig.clock.now += 15
        if flips % 2:
            rig.fakes.reset("opencost")
        else:
            rig.fakes.set("opencost", "error500")
        flips += 1
        await asyncio.sleep(0.15)
    rig.fakes.reset("opencost")
    return flips


def hammer(base: str) -> dict[str, list[tuple[int, float]]]:
    """Every request of :data:`REQUESTS`, interleaved, ``CONCURRENCY`` at a time."""
    plan = [path for path, n in REQUESTS.items() for _ in range(n)]
    plan = [plan[i] for i in sorted(range(len(plan)), key=lambda i: (i * 7919) % len(plan))]
    out: dict[str, list[tuple[int, float]]] = {p: [] for p in REQUESTS}
    lock = threading.Lock()
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(path: str) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=10)
            with lock:
                clients.append(client)
        started = time.perf_counter()
        resp = client.get(base + path, headers={"Accept-Encoding": "gzip"})
        elapsed = time.perf_counter() - started
        with lock:
            out[path].append((resp.status_code, elapsed))

    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, plan))
    finally:
        for client in clients:
            client.close()
    return out


async def test_load_while_refreshing_and_flapping(aiohttp_client: Any) -> None:
    rig = await start_rig(
        aiohttp_client,
        extra={"refresh": {"interval_seconds": REFRESH_INTERVAL}},
        run_loop=True,
    )
    try:
        await rig.refresher.refresh_once()
        base = str(rig.client.make_url("")).rstrip("/")
        stop = asyncio.Event()
        flapper = asyncio.create_task(churn(rig, stop))
        refreshes_before = rig.refresher.snapshot.status.refreshes  # type: ignore[union-attr]
        started = time.perf_counter()
        results = await asyncio.to_thread(hammer, base)
        wall = time.perf_counter() - started
        stop.set()
        flips = await flapper
        refreshes = rig.refresher.snapshot.status.refreshes - refreshes_before  # type: ignore[union-attr]

        assert flips >= 3 and refreshes >= 5, (flips, refreshes)
        total = sum(len(v) for v in results.values())
        assert total == sum(REQUESTS.values())
        for path, answers in results.items():
            statuses = {status for status, _ in answers}
            # /readyz is 200 throughout: flapping never makes the exporter unready
            assert statuses == {200}, (path, statuses)
            times = [t for _, t in answers]
            p50, p99 = statistics.median(times), percentile(times, 0.99)
            RESULTS[path] = (
                f"{len(times)} req  p50 {p50 * 1000:.1f} ms  p99 {p99 * 1000:.1f} ms  "
                f"max {max(times) * 1000:.1f} ms"
            )
            assert p99 < 1.0, (path, p99)
        RESULTS["run"] = (
            f"{total} requests in {wall:.1f} s, concurrency {CONCURRENCY}, "
            f"{refreshes} refreshes, {flips} OpenCost flips"
        )
    finally:
        await rig.close()


async def test_memory_is_flat_across_refresh_cycles(aiohttp_client: Any) -> None:
    rig = await start_rig(aiohttp_client)
    try:
        for i in range(20):  # warm up: caches, histories and pools reach their size
            rig.clock.now = T0 + 30 * i
            await rig.refresh()
        start = rss_bytes()
        cycles = 150
        for i in range(20, 20 + cycles):
            rig.clock.now = T0 + 30 * i
            if i % 3 == 0:
                rig.fakes.set("opencost", "error500")
            elif i % 3 == 1:
                rig.fakes.reset("opencost")
            await rig.refresh()
            if i % 10 == 0:
                await (await rig.client.get("/metrics")).read()
        end = rss_bytes()
        growth = (end - start) / 2**20
        RESULTS["rss"] = (
            f"{start / 2**20:.1f} MiB -> {end / 2**20:.1f} MiB over {cycles} refresh cycles "
            f"({growth:+.1f} MiB)"
        )
        assert growth < 40, RESULTS["rss"]
    finally:
        await rig.close()
