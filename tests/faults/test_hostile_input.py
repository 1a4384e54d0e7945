"""Issue 14, items 1 and 2: hostile answers that once stopped cost counting for good, or kept
their bodies in memory for good, through the real app with the production runtime settings
(``conftest.py``).

* A lone UTF-16 surrogate in an OpenCost label used to make the renderer raise
  ``UnicodeEncodeError``: the loop died, ``/metrics`` froze, ``/readyz`` stayed 200. It is now
  replaced where the text enters (``text.py``); and were anything to get past that,
  the failing stage is counted, the previous report served, the next refresh runs, and the
  watchdog turns ``/readyz`` 503 while nothing is published.
* A failed fetch of a large answer (over the cap, unparsable, a gzip bomb) used to stay alive
  through its exception's frames, frozen by the GC tuning: RSS grew by the body each refresh.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
from structlog.testing import capture_logs

from aifinops.model.inputs import AllocationSet
from aifinops.refresh import STAGES
from aifinops.web.app import REFRESH_TASK
from tests.faults.hostile import SURROGATE_TENANT, TENANT_KEY, bomb
from tests.faults.rig import Page, Rig, errors, money_problems, start_rig, value
from tests.web.conftest import T0, parse_page

B = T0 + 60
MIB = 1024 * 1024


def tenants(page: Page) -> set[str]:
    return {lbl["tenant"] for lbl, _ in page.get("aifinops_tenant_cost_usd_per_hour", [])}


def failures(page: Page) -> dict[str, float]:
    return {lbl["stage"]: v for lbl, v in page.get("aifinops_refresh_failures_total", []) if v}


async def readyz(rig: Rig) -> tuple[int, dict[str, Any]]:
    resp = await rig.client.get("/readyz")
    return resp.status, await resp.json()


async def test_lone_surrogate_in_an_opencost_label_is_replaced_at_the_source(
    aiohttp_client: Any,
) -> None:
    rig = await start_rig(aiohttp_client, hostile=True)
    assert rig.hostile is not None
    try:
        await rig.refresh(T0)
        await rig.refresh(B)
        base = await rig.page()
        assert not any("\ufffd" in t for t in tenants(base))

        rig.hostile.mode = "surrogate"
        with capture_logs() as logs:
            await rig.refresh(B + 60)
            await rig.refresh(B + 120)
        page = await rig.page()  # the page encodes and parses
        replaced = {t for t in tenants(page) if "\ufffd" in t}
        assert replaced == {f"tenant-\ufffd-{n}" for n in range(3)}
        assert SURROGATE_TENANT == "tenant-\ud800"
        assert value(page, "aifinops_source_up", source="opencost") == 1.0
        assert errors(page, "opencost") == {}
        assert failures(page) == {}
        assert value(page, "aifinops_last_refresh_timestamp_seconds") == B + 120
        assert money_problems(page) == []
        assert [e for e in logs if e["event"] == "refresh_stage_failed"] == []
        # the JSON API says the same
        resp = await rig.client.get("/api/v1/summary")
        assert resp.status == 200
        assert "\ufffd" in await resp.text() or "\\ufffd" in await resp.text()
        status, body = await readyz(rig)
        assert (status, body["ready"], body["stalled"]) == (200, True, False)

        rig.hostile.mode = "pass"
        await rig.refresh(B + 180)
        assert not any("\ufffd" in t for t in tenants(await rig.page()))
    finally:
        await rig.close()


class Poisoned:
    """The real OpenCost source, whose parsed answer a test can poison: every pod's tenant
    label gets a lone surrogate, as if a parser had let one through. The stage that meets it
    (the renderer) fails: what the loop must survive."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.poison = False

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def fetch(self, client: Any) -> Any:
        data = await self.inner.fetch(client)
        if self.poison and isinstance(data, AllocationSet):
            rows = tuple(
                msgspec.structs.replace(a, labels={**a.labels, TENANT_KEY: "evil\ud800"})
                if a.pod
                else a
                for a in data.allocations
            )
            data = AllocationSet(data.window_hours, rows)
        return data


async def test_a_failing_stage_is_counted_and_the_previous_report_served(
    aiohttp_client: Any,
) -> None:
    poisoned: list[Poisoned] = []

    def wrap(source: Any) -> Any:
        if source.name != "opencost":
            return source
        poisoned.append(Poisoned(source))
        return poisoned[-1]

    rig = await start_rig(aiohttp_client, wrap=wrap)
    try:
        await rig.refresh(T0)
        await rig.refresh(B)
        good_text = await rig.text()
        good = parse_page(good_text)
        assert failures(good) == {}
        assert {lbl["stage"] for lbl, _ in good["aifinops_refresh_failures_total"]} == set(STAGES)
        assert value(good, "aifinops_refresh_stalled") == 0.0
        summary = await (await rig.client.get("/api/v1/summary")).json()

        poisoned[0].poison = True
        with capture_logs() as logs:
            await rig.refresh(B + 60)
            await rig.refresh(B + 120)  # still poisoned: counted, not logged again
        page = await rig.page()
        assert failures(page) == {"render": 2.0}
        failed = [e for e in logs if e["event"] == "refresh_stage_failed"]
        assert [(e["stage"], e["error"].split(":")[0]) for e in failed] == [
            ("render", "UnicodeEncodeError")
        ]
        # The previous report keeps serving, with this cycle's self-metrics; the API agrees.
        assert tenants(page) == tenants(good)
        assert value(page, "aifinops_cluster_cost_usd_per_hour", resource="gpu") == value(
            good, "aifinops_cluster_cost_usd_per_hour", resource="gpu"
        )
        assert value(page, "aifinops_last_refresh_timestamp_seconds") == B
        assert value(page, "aifinops_refreshes_total") == 4.0
        assert await (await rig.client.get("/api/v1/summary")).json() == summary

        # No report published for 3 intervals: the watchdog says so.
        status, body = await readyz(rig)
        assert (status, body["stalled"]) == (200, False)  # 3 intervals of 30 s: not yet
        assert rig.refresher.stall_seconds() >= 3 * 30.0  # or 3 x the longest fetch bound
        rig.refresher.stall_after = 0.15
        await asyncio.sleep(0.2)
        status, body = await readyz(rig)
        assert (status, body["ready"], body["stalled"]) == (503, False, True)
        await rig.refresh(B + 180)
        stalled = await rig.page()
        assert value(stalled, "aifinops_refresh_stalled") == 1.0
        assert failures(stalled) == {"render": 3.0}

        # Fixed upstream: the next refresh publishes, and everything says so.
        poisoned[0].poison = False
        with capture_logs() as logs:
            await rig.refresh(B + 240)
        page = await rig.page()
        assert value(page, "aifinops_refresh_stalled") == 0.0
        assert value(page, "aifinops_last_refresh_timestamp_seconds") == B + 240
        assert failures(page) == {"render": 3.0}
        assert [e["stage"] for e in logs if e["event"] == "refresh_stage_recovered"] == ["render"]
        status, body = await readyz(rig)
        assert (status, body["ready"], body["stalled"]) == (200, True, False)
    finally:
        await rig.close()


async def test_the_watchdog_marks_a_wedged_loop(aiohttp_client: Any) -> None:
    """No refresh at all (a loop stuck in a stage): the watchdog alone flips the page."""
    rig = await start_rig(aiohttp_client)
    try:
        await rig.refresh(T0)
        assert value(await rig.page(), "aifinops_refresh_stalled") == 0.0
        rig.refresher.interval = 0.05  # the watchdog looks every half interval
        rig.refresher.stall_after = 0.15
        with capture_logs() as logs:
            watchdog = asyncio.create_task(rig.refresher.watch())
            try:
                deadline = time.monotonic() + 5
                while value(await rig.page(), "aifinops_refresh_stalled") != 1.0:
                    assert time.monotonic() < deadline, "the watchdog never flagged the stall"
                    await asyncio.sleep(0.02)
            finally:
                watchdog.cancel()
        assert [e["event"] for e in logs if e["event"].startswith("refresh_")] == [
            "refresh_stalled"
        ]
        assert (await readyz(rig))[0] == 503
        # the money on the page is the last report's, still there
        assert value(await rig.page(), "aifinops_cluster_cost_usd_per_hour", resource="gpu")
    finally:
        await rig.close()


async def test_the_loop_survives_a_refresh_that_raises(aiohttp_client: Any) -> None:
    """The last net: were a refresh itself to raise (outside every stage), the loop counts it
    (stage ``loop``) and runs the next one; it used to end the loop task for good."""
    rig = await start_rig(aiohttp_client)
    real = rig.refresher.refresh_once
    calls = 0

    async def flaky(*, defer: bool = False) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("a bug outside every stage")
        return await real(defer=defer)

    rig.refresher.refresh_once = flaky  # type: ignore[method-assign]
    loop = asyncio.create_task(rig.refresher.run(0.01))
    try:
        deadline = time.monotonic() + 20
        while calls < 4:
            assert not loop.done(), loop
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        page = await rig.page()
        assert failures(page) == {"loop": 2.0}
        assert value(page, "aifinops_refresh_stalled") == 0.0
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await rig.close()


async def test_shutdown_after_failed_refreshes_saves_the_state(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """What SIGTERM runs (the app's cleanup: cancel the loop, write the state file) completes
    after the running loop met a failing stage; it used to re-raise the loop's exception and
    skip the save (exit 1)."""
    poisoned: list[Poisoned] = []

    def wrap(source: Any) -> Any:
        if source.name == "opencost":
            poisoned.append(Poisoned(source))
            return poisoned[-1]
        return source

    path = tmp_path / "state.json"
    extra = {"refresh": {"interval_seconds": 0.05}, "state": {"path": str(path)}}
    rig = await start_rig(aiohttp_client, extra=extra, wrap=wrap, run_loop=True)
    try:
        deadline = time.monotonic() + 20
        while rig.refresher.snapshot.report is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        saved_before = path.stat().st_mtime_ns if path.exists() else 0
        poisoned[0].poison = True
        while not failures(await rig.page()).get("render", 0) >= 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert not rig.app[REFRESH_TASK].done()  # the loop goes on after failures
        with capture_logs() as logs:
            await rig.client.close()  # the app's cleanup, as on SIGTERM
        assert path.exists() and path.stat().st_mtime_ns > saved_before
        assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    finally:
        await rig.close()


async def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / MIB


async def test_failed_large_answers_are_freed(aiohttp_client: Any) -> None:
    """Each refresh OpenCost fails after ~32 MiB: a gzip bomb (inflated to the cap), a body
    over the cap, a body that does not parse. Memory stays flat; it used to keep each body
    (16 refreshes: +500 MiB)."""
    cap = 32 * MIB
    extra = {"sources": {"opencost": {"max_response_bytes": cap}}}
    rig = await start_rig(aiohttp_client, extra=extra, hostile=True)
    assert rig.hostile is not None
    assert len(bomb()) < 400_000  # 256 MiB inflated
    modes = ["bomb", f"junk:{cap + MIB}", f"junk:{cap - MIB}"]
    reasons = {"bomb": "too_large", "junk": "parse"}
    try:
        await rig.refresh(T0)
        await rig.refresh(B)
        at = B
        for i in range(3):  # warm: allocator pools, caches
            rig.hostile.mode = modes[i]
            at += 60
            await rig.refresh(at)
        start = await rss_mib()
        counted: dict[str, float] = {}
        for i in range(15):
            mode = modes[i % 3]
            rig.hostile.mode = mode
            at += 60
            await rig.refresh(at)
            reason = "too_large" if mode == f"junk:{cap + MIB}" else reasons[mode.split(":")[0]]
            counted[reason] = counted.get(reason, 0) + 1
        grown = await rss_mib() - start
        page = await rig.page()
        assert value(page, "aifinops_source_up", source="opencost") == 0.0
        assert set(errors(page, "opencost")) == {"too_large", "parse"}
        assert failures(page) == {}
        assert grown < 96, f"RSS grew {grown:.0f} MiB over 15 failed ~32 MiB answers"
    finally:
        await rig.close()
