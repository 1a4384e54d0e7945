"""The refresh loop routes the HAMi source's data (slot SHARED) into the model: a HAMi
source beside OpenCost, without DCGM, publishes the usage basis and the split methods."""

from __future__ import annotations

import math

import httpx

from aifinops.exposition.families import BuildInfo
from aifinops.model.inputs import AllocationSet, SharedHold
from aifinops.refresh import Refresher
from aifinops.sources.base import Slot
from tests.model.builders import H100, context, pod


class Fake:
    local = False
    min_interval_seconds = 0.0
    first_read_baseline = False
    targets = None

    def __init__(self, name: str, slot: Slot, data: object) -> None:
        self.name, self.slot, self._data = name, slot, data

    async def fetch(self, client: httpx.AsyncClient) -> object:
        return self._data


async def test_hami_data_reaches_the_model_through_its_slot() -> None:
    rows = AllocationSet(
        1.0,
        (
            pod("team-a", "trainer-0", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0),
            pod("team-b", "infer-0", gpu_cost=4.0, gpu_count=1.0, gpu_hours=1.0),
        ),
    )
    holds = (
        SharedHold("GPU-0", "n1", "team-a", "trainer-0", 0.5, 0.5, 0.37, H100),
        SharedHold("GPU-0", "n1", "team-b", "infer-0", 0.25, 0.25, None, H100),
    )
    sources = [
        (Fake("opencost", Slot.ALLOCATIONS, rows), 1.0, 600.0),
        (Fake("hami", Slot.SHARED, holds), 1.0, 600.0),
    ]
    async with httpx.AsyncClient() as client:
        refresher = Refresher(sources, context(), BuildInfo("t", "t", "t"), client, lambda: 1e9)
        snap = await refresher.refresh_once()
    report = snap.report
    assert report is not None
    usage = {t: round(v, 9) for (t, r), v in report.cost.rates["usage"].items() if r == "gpu"}
    # trainer-0 uses 37 % of $4/h; infer-0 is held at its 25 % share; the rest is __idle__.
    assert usage == {"a": 1.48, "b": 1.0, "__idle__": 5.52}
    assert report.cost.held_unmeasured == 1
    split = report.cost.method_rates["usage"]
    assert {m for (_, m) in split} == {"hami"}
    assert math.isclose(math.fsum(split.values()), 8.0)
