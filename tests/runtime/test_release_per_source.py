"""A source's previous data is freed as soon as its new data is in, not after every other
fetch of the cycle: a slow source still parsing then reuses that memory instead of adding to
the refresh's peak. The cycle's outcome is the same."""

from __future__ import annotations

import asyncio
import gc
import weakref

import httpx

from aifinops.exposition.families import BuildInfo
from aifinops.model.inputs import AllocationSet
from aifinops.refresh import Refresher
from aifinops.sources.base import Slot
from tests.model.builders import context, pod


class Latencies(dict[tuple[str, str], float]):
    """A latency source's answer that can be watched with a weak reference."""


class Fast:
    name, slot, local, min_interval_seconds = "latency", Slot.LATENCY, False, 0.0
    first_read_baseline, targets = False, None

    def __init__(self) -> None:
        self.answers: list[weakref.ref[Latencies]] = []

    async def fetch(self, client: httpx.AsyncClient) -> Latencies:
        data = Latencies({("m", "p"): 0.25 + len(self.answers)})
        self.answers.append(weakref.ref(data))
        return data


class Slow:
    """OpenCost, whose second read waits until the test lets it go."""

    name, slot, local, min_interval_seconds = "opencost", Slot.ALLOCATIONS, False, 0.0
    first_read_baseline, targets = False, None

    def __init__(self) -> None:
        self.reads = 0
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()

    async def fetch(self, client: httpx.AsyncClient) -> AllocationSet:
        self.reads += 1
        if self.reads == 2:
            self.waiting.set()
            await self.go.wait()
        return AllocationSet(1.0, (pod("team-a", "trainer-0", gpu_cost=2.0, cpu_cost=0.5),))


async def test_previous_data_is_freed_while_other_sources_still_fetch() -> None:
    fast, slow = Fast(), Slow()
    sources = [(slow, 1.0, 600.0), (fast, 1.0, 600.0)]
    gc.disable()  # freed by reference counting alone, as in a refresh
    try:
        async with httpx.AsyncClient() as client:
            refresher = Refresher(sources, context(), BuildInfo("t", "t", "t"), client, lambda: 1e9)
            first = await refresher.refresh_once()
            assert first.report is not None and fast.answers[0]() is not None
            cycle = asyncio.create_task(refresher.refresh_once())
            await slow.waiting.wait()
            for _ in range(50):  # the fast source's fetch and its release on the CPU worker
                if len(fast.answers) == 2 and fast.answers[0]() is None:
                    break
                await asyncio.sleep(0.01)
            assert len(fast.answers) == 2
            assert fast.answers[0]() is None, "the first answer outlived its replacement"
            assert fast.answers[1]() is not None
            slow.go.set()
            second = await cycle
    finally:
        gc.enable()
    assert second.report is not None
    assert second.report.cost.rates == first.report.cost.rates
    assert [s.up for s in second.status.sources] == [True, True]
