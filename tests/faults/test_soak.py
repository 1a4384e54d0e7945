"""Soak: the real refresh loop, 210+ refreshes at a 20 ms interval under rotating faults on
every kind of upstream (down, slow, garbage, oversized, gzip bomb, lone surrogates), with the
production runtime settings (``conftest.py``). Memory stays flat (RSS bound), the loop never
stalls (the watchdog never fires, refreshes keep completing), scrapes stay fast, and once
the faults stop every source is up again."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

from tests.faults.rig import HUGE, Rig, start_rig, value
from tests.faults.test_hostile_input import failures, rss_mib
from tests.web.conftest import T0, parse_page

REFRESHES = 210
PER_PHASE = 10
# (upstream, mode): the demo fakes' fault switch, or the hostile proxy in front of OpenCost
PHASES: list[tuple[str, str]] = [
    ("", "ok"),
    ("prometheus", "down"),  # DCGM through Prometheus
    ("opencost", "slow:0.3"),  # twice its timeout
    ("vllm", "garbage"),
    ("litellm", f"huge:{HUGE}"),
    ("proxy", "bomb"),  # OpenCost
    ("proxy", "surrogate"),  # OpenCost
]
OPENCOST_CAP = 16 * 1024 * 1024
# After the first round of faults (allocator pools, caches, the proxy's bomb): measured flat
# within a few MiB; a failed body kept per refresh would add OPENCOST_CAP per bomb phase
# refresh (160 MiB a round).
RSS_GROWTH_MIB = 32
DEADLINE_S = 50.0


def apply(rig: Rig, upstream: str, mode: str) -> None:
    assert rig.hostile is not None
    for name in ("prometheus", "opencost", "vllm", "litellm"):
        rig.fakes.reset(name)
    rig.hostile.mode = "pass"
    if upstream == "proxy":
        rig.hostile.mode = mode
    elif upstream:
        rig.fakes.set(upstream, mode)


async def test_soak_under_rotating_faults(aiohttp_client: Any) -> None:
    extra = {
        "refresh": {"interval_seconds": 0.02},
        "sources": {
            "opencost": {"timeout_seconds": 0.15, "max_response_bytes": OPENCOST_CAP},
        },
    }
    rig = await start_rig(aiohttp_client, extra=extra, hostile=True, run_loop=True)
    rig.refresher.stall_after = 2.0  # 2 s without a published report: a stall
    latencies: list[float] = []
    gaps: list[float] = []
    rss: list[float] = []
    seen_phase = -1
    session = rig.client.session
    try:
        started = time.monotonic()
        last_count, last_at = 0, started
        while True:
            status = rig.refresher.snapshot.status
            count = status.refreshes if status else 0
            now = time.monotonic()
            if count != last_count:
                gaps.append(now - last_at)
                last_count, last_at = count, now
                # Simulated time moves 30 s a refresh, as in production (the model's windows
                # and the fakes' counters move with it; a fixed clock keeps every sample).
                rig.clock.now = T0 + 30 * count
            if count >= REFRESHES:
                break
            assert now - started < DEADLINE_S, f"only {count} refreshes in {DEADLINE_S:g}s"
            assert now - last_at < 3.0, f"no refresh for {now - last_at:.1f}s after #{count}"
            phase = count // PER_PHASE
            if phase != seen_phase:
                seen_phase = phase
                if phase % len(PHASES) == 0:
                    rss.append(await rss_mib())
            t0 = time.perf_counter()
            # Through the client's session: TestClient.get keeps every response (and its
            # body) until the test ends, which would be the memory measured here.
            async with session.get(rig.client.make_url("/metrics")) as resp:
                await resp.read()
                assert resp.status == 200
            latencies.append(time.perf_counter() - t0)
            async with session.get(rig.client.make_url("/readyz")) as resp:
                assert (await resp.json())["stalled"] is False
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        rss.append(await rss_mib())

        apply(rig, "", "ok")
        deadline = time.monotonic() + 10
        while True:
            text = await (await rig.client.get("/metrics")).text()
            page = parse_page(text)
            up = {lbl["source"]: v for lbl, v in page["aifinops_source_up"] if lbl["source"] != "x"}
            if all(up.values()):
                break
            assert time.monotonic() < deadline, up
            await asyncio.sleep(0.05)
        assert failures(page) == {}
        assert value(page, "aifinops_refresh_stalled") == 0.0
        assert value(page, "aifinops_refreshes_total") >= REFRESHES  # type: ignore[operator]
        growth = max(rss[2:]) - rss[1]
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(
            f"\nsoak: {count} refreshes in {elapsed:.1f}s, RSS at each round "
            f"{[round(r) for r in rss]} MiB, max gap {max(gaps):.2f}s, "
            f"scrape p99 {p99 * 1000:.0f} ms",
            file=sys.stderr,
        )
        assert growth < RSS_GROWTH_MIB, rss
        assert p99 < 0.5, p99
    finally:
        await rig.close()
