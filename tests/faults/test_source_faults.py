"""Every source driven into every fault its fake offers, through the real app.

For each (source, fault): ``/metrics`` keeps answering quickly while the refresh runs (the
refresh is a background task, the page is prepared bytes); the other sources stay up with
fresh data; the bad source is marked (``up`` 0, the reason counted, ``age`` growing); its
last good data is used until ``stale_after_seconds`` and then dropped visibly
(``aifinops_source_stale`` 1, no age); no money series ever holds a negative or non-finite
value; and the log has one line per state change, not one per failed refresh.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.faults.rig import (
    HUGE,
    STALE_AFTER,
    TARGETS,
    TIMEOUT,
    Page,
    errors,
    metrics_latencies_during,
    money_problems,
    money_series,
    start_rig,
    value,
)
from tests.web.conftest import T0

SOURCES = ("dcgm", "opencost", "tokens:vllm", "tokens:litellm", "llm_prices", "tokens:push")
TOKEN_SOURCES = ("tokens:vllm", "tokens:litellm")
# Gross bound on one /metrics answer while a refresh runs on the same event loop; a scrape
# never waits for an upstream, only (at worst) for one model computation of ~50 ms.
SCRAPE_BUDGET = 0.5
B = T0 + 60  # when the last good data was fetched

# fault mode -> the error reason the exporter must count (None: the answer is usable)
FAULTS: dict[str, str | None] = {
    "down": "connect",
    "unavailable": "http_status",
    "error500": "http_status",
    "garbage": "parse",
    "truncated": "parse",
    f"slow:{TIMEOUT * 2}": "timeout",
    f"slow:{TIMEOUT * 10}": "timeout",
    "empty": "invalid",
    f"huge:{HUGE}": "too_large",
    "absurd": None,
}


def expected_reason(source: str, mode: str) -> str | None:
    if mode == "empty" and source in TOKEN_SOURCES:
        # A gateway with no traffic yet exposes no token series: zero tokens, not a fault.
        return None
    return FAULTS[mode]


def cluster_gpu(page: Page) -> float | None:
    return value(page, "aifinops_cluster_cost_usd_per_hour", resource="gpu")


def assert_sane(page: Page) -> None:
    assert money_problems(page) == []
    assert page.get("aifinops_build_info"), "self-metrics must always be on the page"


def page_tokens(page: Page) -> float:
    return sum(v for _, v in page.get("aifinops_tokens_total", []))


def log_events(logs: list[dict[str, Any]], event: str, source: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event and e.get("source") == source]


@pytest.mark.parametrize("mode", list(FAULTS))
@pytest.mark.parametrize("target_id", list(TARGETS))
async def test_fault(aiohttp_client: Any, target_id: str, mode: str) -> None:
    target = TARGETS[target_id]
    source = target.source
    reason = expected_reason(source, mode)
    rig = await start_rig(aiohttp_client, target.dcgm_mode, short_timeout=source)
    try:
        await rig.refresh(T0)  # a scraped counter's first reading is its baseline
        await rig.refresh(B)
        base = await rig.page()
        assert {s: value(base, "aifinops_source_up", source=s) for s in SOURCES} == dict.fromkeys(
            SOURCES, 1.0
        )
        base_gpu = cluster_gpu(base)
        assert base_gpu and money_series(base) > 50
        base_tokens = page_tokens(base)
        assert base_tokens

        rig.fakes.set(target.upstream, mode)
        with capture_logs() as logs:
            started = time.perf_counter()
            task = asyncio.create_task(rig.refresh(B + 60))
            latencies = await metrics_latencies_during(rig, task)
            first_refresh = time.perf_counter() - started
            await rig.refresh(B + 120)
            page = await rig.page()
            assert_sane(page)
            assert max(latencies) < SCRAPE_BUDGET, latencies
            if mode.startswith("slow"):
                # bounded by the source's timeout, whatever the upstream does; scrapes went on
                assert TIMEOUT * 0.9 < first_refresh < TIMEOUT * 1.5 + 1.0, first_refresh
                assert len(latencies) >= 2, (first_refresh, latencies)

            others = [s for s in SOURCES if s != source]
            for other in others:
                why = (other, errors(page, other), rig.refresher.snapshot.status)
                assert value(page, "aifinops_source_up", source=other) == 1.0, why
                assert value(page, "aifinops_source_age_seconds", source=other) == 0.0, why
                assert errors(page, other) == {}, why
            # the month-to-date query runs every budgets.refresh_interval_seconds: untouched
            month = value(base, "aifinops_source_up", source="opencost_month")
            assert value(page, "aifinops_source_up", source="opencost_month") == month

            if reason is None:
                # usable after sanitising (clamped / skipped values): the source stays up
                assert value(page, "aifinops_source_up", source=source) == 1.0
                assert errors(page, source) == {}
                assert log_events(logs, "source_down", source) == []
                return

            assert value(page, "aifinops_source_up", source=source) == 0.0
            assert errors(page, source) == {reason: 2.0}
            assert value(page, "aifinops_source_age_seconds", source=source) == 120.0
            assert value(page, "aifinops_source_stale", source=source) == 0.0
            # the last good data is still used: costs are all there
            assert cluster_gpu(page) is not None
            if source == "opencost":
                assert cluster_gpu(page) == pytest.approx(base_gpu)
            if source == "tokens:litellm":
                # last good counters kept: nothing lost, nothing counted twice
                assert page_tokens(page) == base_tokens

            # past stale_after_seconds the data is dropped, and says so
            await rig.refresh(B + STALE_AFTER + 1)
            stale = await rig.page()
            assert_sane(stale)
            assert value(stale, "aifinops_source_stale", source=source) == 1.0
            assert value(stale, "aifinops_source_age_seconds", source=source) is None
            assert errors(stale, source) == {reason: 3.0}
            if source == "opencost":
                assert cluster_gpu(stale) is None, "no allocation data: no cost rates"
            for other in others:
                assert value(stale, "aifinops_source_up", source=other) == 1.0, other
            ready = await rig.client.get("/readyz")
            assert ready.status == 200

            # the upstream heals: fresh data, not stale, errors kept as counters
            rig.fakes.reset(target.upstream)
            await rig.refresh(B + STALE_AFTER + 61)
            healed = await rig.page()
            assert_sane(healed)
            assert value(healed, "aifinops_source_up", source=source) == 1.0
            assert value(healed, "aifinops_source_stale", source=source) == 0.0
            assert value(healed, "aifinops_source_age_seconds", source=source) == 0.0
            assert errors(healed, source) == {reason: 3.0}
            assert cluster_gpu(healed) is not None

        # four refreshes, three of them failed: one line down, one when dropped, one up again
        assert len(log_events(logs, "source_down", source)) == 1
        assert len(log_events(logs, "source_stale_dropped", source)) == 1
        assert len(log_events(logs, "source_up", source)) == 1
        assert log_events(logs, "source_down", source)[0]["state"] == f"down:{reason}"
        for other in others:
            assert log_events(logs, "source_down", other) == [], other
    finally:
        await rig.close()
