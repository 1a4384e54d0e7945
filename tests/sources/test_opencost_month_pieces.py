"""The month query in pieces: each request's window, the split in halves when an answer is
over ``max_response_bytes`` (and the reason when one day is), the settled pieces kept, and
sets dated after the window reported instead of dropped. OpenCost is an httpx mock that
answers like ``QueryAllocation`` (one set per 24 h step from the window start, rows carrying
``window.start``)."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime
from typing import Any

import httpx
import pytest

from aifinops.model.calendar import DAY_SECONDS
from aifinops.offload import run_cpu
from aifinops.settings import OpenCostSettings
from aifinops.settings_finance import BudgetsSettings
from aifinops.sources.base import SourceError
from aifinops.sources.opencost import (
    OpenCostMonthSource,
    rfc3339_utc,
)

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
MAY_1 = 1_746_057_600.0
JUNE_1 = 1_748_736_000.0
URL = "http://opencost.test"
PAD = "x" * 2000  # row padding, so a day's answer has a size worth capping


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class FakeOpenCost:
    """Answers every window with one set per 24 h step; each set one row costing $24/day
    (a dollar an hour), dated ``shift`` seconds later than it should be."""

    def __init__(self, shift: float = 0.0) -> None:
        self.windows: list[tuple[float, float]] = []
        self.shift = shift

    def __call__(self, request: httpx.Request) -> httpx.Response:
        start_text, end_text = request.url.params["window"].split(",")
        start, end = parse_time(start_text), parse_time(end_text)
        self.windows.append((start, end))
        sets = []
        t = start
        while t < end:
            e = min(t + DAY_SECONDS, end)
            sets.append(
                {
                    "ns/pod": {
                        "name": "ns/pod",
                        "properties": {"namespace": "ns", "pod": "pod", "labels": {"pad": PAD}},
                        "window": {"start": rfc3339_utc(t + self.shift), "end": rfc3339_utc(e)},
                        "minutes": (e - t) / 60.0,
                        "cpuCost": (e - t) / 3600.0,
                        "cpuCoreHours": 2 * (e - t) / 3600.0,
                    }
                }
            )
            t = e
        body = json.dumps({"code": 200, "status": "success", "data": sets}).encode()
        return httpx.Response(200, content=body)


def source(clock: list[float], **oc: Any) -> OpenCostMonthSource:
    settings = OpenCostSettings(url=URL, month_aggregation="pod", **oc)
    return OpenCostMonthSource(
        settings, BudgetsSettings(lookback_days=3), lambda: clock[0], run=run_cpu
    )


async def fetch(src: OpenCostMonthSource, fake: FakeOpenCost) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as client:
        return await src.fetch(client)


async def test_pieces_cover_the_window_and_settled_ones_are_kept() -> None:
    clock = [T0]
    fake = FakeOpenCost()
    src = source(clock, month_piece_days=7)
    got = await fetch(src, fake)
    # May in 5 pieces (7+7+7+7+3 days), June to date in 3 (7+7+0.63)
    assert len(fake.windows) == 8
    assert all(b - a <= 7 * DAY_SECONDS for a, b in fake.windows)
    assert [s for s, _, _ in got.sets] == [MAY_1 + i * DAY_SECONDS for i in range(46)]
    dollars = math.fsum(a.total_cost for _, _, s in got.sets for a in s.allocations)
    assert dollars == pytest.approx((math.floor(T0) - MAY_1) / 3600.0)
    cores = math.fsum(a.cpu_core_hours for _, _, s in got.sets for a in s.allocations)
    assert cores == pytest.approx(2 * dollars)

    # ten minutes later only the pieces that ended less than two days ago are asked again
    clock[0] = T0 + 600
    fake.windows.clear()
    again = await fetch(src, fake)
    assert fake.windows == [
        (JUNE_1 + 7 * DAY_SECONDS, JUNE_1 + 14 * DAY_SECONDS),  # ended 15 h ago
        (JUNE_1 + 14 * DAY_SECONDS, math.floor(T0 + 600)),
    ]
    assert len(again.sets) == 46


async def test_a_piece_over_the_cap_is_split_and_one_day_over_it_names_the_setting() -> None:
    clock = [T0]
    fake = FakeOpenCost()
    one_day = len(
        fake(
            httpx.Request(
                "GET", URL, params={"window": "2025-06-01T00:00:00Z,2025-06-02T00:00:00Z"}
            )
        ).content
    )
    fake.windows.clear()
    # 3 days fit under the cap, 7 do not
    src = source(clock, month_piece_days=7, history_months=0, max_response_bytes=int(3.5 * one_day))
    got = await fetch(src, fake)
    assert [s for s, _, _ in got.sets] == [JUNE_1 + i * DAY_SECONDS for i in range(15)]
    assert 1 <= src.piece_days <= 3  # later fetches ask for pieces that fit
    clock[0] = T0 + 3 * DAY_SECONDS
    fake.windows.clear()
    await fetch(src, fake)
    assert all(b - a <= src.piece_days * DAY_SECONDS for a, b in fake.windows)

    tiny = source([T0], history_months=0, max_response_bytes=1000)
    with pytest.raises(SourceError) as err:
        await fetch(tiny, FakeOpenCost())
    assert err.value.reason == "too_large"
    assert "sources.opencost.max_response_bytes" in str(err.value)
    assert "one day" in str(err.value)


async def test_sets_dated_after_the_window_are_a_reason_not_dropped_silently() -> None:
    # OpenCost's clock a day ahead: its last set of every piece starts after the piece ends
    src = source([T0], history_months=0)
    with pytest.raises(SourceError) as err:
        await fetch(src, FakeOpenCost(shift=DAY_SECONDS))
    assert err.value.reason == "invalid"
    assert "dated after the window" in str(err.value) and "clock" in str(err.value)

    # a few seconds of skew at most shortens the day it falls on: no error
    got = await fetch(source([T0], history_months=0), FakeOpenCost(shift=30.0))
    assert len(got.sets) == 15


async def test_a_fetch_cut_short_resumes_with_the_pieces_it_got() -> None:
    """The refresh loop bounds a fetch (1.5 × the source's timeout): a first fetch of weeks
    cut there keeps the settled pieces it read, so the next attempt asks only the rest."""
    fake = FakeOpenCost()
    asked: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["window"])
        await asyncio.sleep(0.05)
        return fake(request)

    src = source([T0], month_piece_days=7)
    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(src.fetch(client), 0.18)
        first = len(asked)
        assert 2 <= first < 8
        asked.clear()
        got = await src.fetch(client)
    assert len(got.sets) == 46
    assert len(asked) <= 8 - (first - 1)  # at most the piece in flight is asked again
