"""An upstream that flaps (good, bad, good, ...) and one that stays down for many refreshes:
the data stays continuous, counters never go back, and the log grows by state changes only."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.faults.rig import TARGETS, Page, closed_port_url, errors, money_problems, start_rig
from tests.faults.rig import value as sample
from tests.web.conftest import T0

COUNTERS = ("aifinops_tokens_total", "aifinops_tenant_cost_usd_total")
FLAPS = 5


def counters(page: Page) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (name, tuple(sorted(labels.items()))): v
        for name in COUNTERS
        for labels, v in page.get(name, [])
    }


@pytest.mark.parametrize("target_id", list(TARGETS))
async def test_flapping_source(aiohttp_client: Any, target_id: str) -> None:
    target = TARGETS[target_id]
    rig = await start_rig(aiohttp_client, target.dcgm_mode)
    try:
        await rig.refresh(T0)
        previous = counters(await rig.page())
        with capture_logs() as logs:
            for i in range(1, 2 * FLAPS + 1):
                bad = i % 2 == 1
                if bad:
                    rig.fakes.set(target.upstream, "error500")
                else:
                    rig.fakes.reset(target.upstream)
                await rig.refresh(T0 + 30 * i)
                page = await rig.page()
                assert money_problems(page) == []
                up = sample(page, "aifinops_source_up", source=target.source)
                assert up == (0.0 if bad else 1.0), i
                # never older than one refresh interval, never dropped
                age = sample(page, "aifinops_source_age_seconds", source=target.source)
                assert age == (30.0 if bad else 0.0), i
                assert sample(page, "aifinops_source_stale", source=target.source) == 0.0
                now = counters(page)
                for key, v in now.items():
                    assert v >= previous.get(key, 0.0) - 1e-9, (i, key)
                previous = now
        assert errors(page, target.source) == {"http_status": float(FLAPS)}
        changes = [e for e in logs if e.get("source") == target.source]
        # one line per state change: 2·FLAPS changes, whatever else happened in between
        assert len(changes) == 2 * FLAPS
        assert {e["event"] for e in changes} == {"source_up", "source_down"}
    finally:
        await rig.close()


async def test_long_outage_logs_once(aiohttp_client: Any) -> None:
    rig = await start_rig(aiohttp_client)
    try:
        await rig.refresh(T0)
        rig.fakes.set("opencost", "down")
        with capture_logs() as logs:
            for i in range(1, 21):
                await rig.refresh(T0 + 10 * i)
        page = await rig.page()
        assert errors(page, "opencost") == {"connect": 20.0}
        assert [e["event"] for e in logs if e.get("source") == "opencost"] == ["source_down"]
        # one line per refresh cycle is the design (the "refresh" summary); anything else is
        # logged once (a state change, a model first seen without a price), never per refresh
        events = Counter(e["event"] for e in logs)
        assert events.pop("refresh") == 20
        assert events and max(events.values()) == 1, events
    finally:
        await rig.close()


async def test_closed_port_is_a_connect_error(aiohttp_client: Any) -> None:
    rig = await start_rig(
        aiohttp_client,
        extra={"sources": {"opencost": {"url": closed_port_url()}}},
    )
    try:
        await rig.refresh(T0)
        page = await rig.page()
        assert errors(page, "opencost") == {"connect": 1.0}
        assert sample(page, "aifinops_source_up", source="opencost") == 0.0
        assert sample(page, "aifinops_source_up", source="dcgm") == 1.0
        assert money_problems(page) == []
    finally:
        await rig.close()


async def test_month_query_shares_the_opencost_outage(aiohttp_client: Any) -> None:
    """With OpenCost's month-to-date query configured (the default), an OpenCost outage marks
    both of its sources and blanks neither the other sources nor the page."""
    rig = await start_rig(aiohttp_client, month=True)
    try:
        rig.fakes.set("opencost", "down")
        await rig.refresh(T0)
        page = await rig.page()
        for source in ("opencost", "opencost_month"):
            assert sample(page, "aifinops_source_up", source=source) == 0.0, source
            assert errors(page, source) == {"connect": 1.0}, source
        assert sample(page, "aifinops_source_up", source="dcgm") == 1.0
        assert money_problems(page) == []
    finally:
        await rig.close()
