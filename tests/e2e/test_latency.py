"""The latency source's default PromQL against a real Prometheus scraping the demo's fake vLLM
pods, compared with scrape mode reading the same pages.

The fake runs on a fast clock (each real second is a minute of demo traffic: a pod completes
20 requests of the demo's latency mix per minute), so a 10-second window holds hundreds of
requests; pod 1's drain and restart (demo seconds 840 to 900) fall inside the test, and
Prometheus' ``rate()`` must handle that reset as the scrape mode's window does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifinops.demo.llm import EXPECTED_P95_SECONDS, SELF_HOSTED_MODEL, LlmDemo
from aifinops.offload import run_cpu
from aifinops.settings import LatencySourceSettings
from aifinops.sources.latency import LatencySource
from tests.e2e.harness import ExpositionServer, Processes, start_prometheus, wait_until
from tests.tools import require_binary

pytestmark = pytest.mark.e2e

SPEED = 60.0  # demo seconds per real second
WINDOW = 10  # seconds of real time: ten demo minutes
BUCKET_WIDTH = 0.5  # of the (2.0, 2.5] bucket that holds the p95
KEY = (SELF_HOSTED_MODEL, "vllm")


class FakeVllmPod(ExpositionServer):
    """One fake vLLM pod's ``/metrics`` page, rendered at the fast clock on every request."""

    def __init__(self, demo: LlmDemo, pod: str, started: float) -> None:
        super().__init__()
        self._demo, self._pod, self._started = demo, pod, started

    def get(self) -> str:
        return self._demo.vllm_metrics(self._pod, SPEED * (time.monotonic() - self._started))


async def _fetch(source: LatencySource) -> dict[tuple[str, str], float]:
    async with httpx.AsyncClient() as client:
        return dict(await source.fetch(client))


def test_default_query_on_real_prometheus_matches_scrape_mode(tmp_path: Path) -> None:
    require_binary("prometheus")
    demo = LlmDemo(epoch=0.0)
    started = time.monotonic()
    pod0, pod1 = demo.pods
    with (
        Processes() as procs,
        FakeVllmPod(demo, pod0, started) as a,
        FakeVllmPod(demo, pod1, started) as b,
    ):
        prom = start_prometheus(procs, tmp_path, {"vllm": [a.host_port, b.host_port]})
        by_query = LatencySource(
            LatencySourceSettings(name="q", prometheus_url=prom.url, window_seconds=WINDOW),
            clock=time.time,
            run=run_cpu,
        )
        by_scrape = LatencySource(
            LatencySourceSettings(
                name="s",
                mode="scrape",
                window_seconds=WINDOW,
                scrape_targets=[{"url": f"{s.url}/metrics"} for s in (a, b)],
            ),
            clock=time.time,
            run=run_cpu,
        )

        def measured(source: LatencySource) -> Any:
            return asyncio.run(_fetch(source)).get(KEY)

        # Prometheus needs two scrapes in the window, scrape mode two readings (the first is
        # the baseline): poll both until each has a figure.
        scraped = wait_until(lambda: measured(by_scrape), 30.0, "scrape-mode p95", interval=1.0)
        queried = wait_until(lambda: measured(by_query), 30.0, "PromQL p95", interval=0.5)
        demo_seconds = SPEED * (time.monotonic() - started)
        # the real Prometheus saw the same histogram the hand calculation and scrape mode see
        series = prom.query('count by (le) (vllm:e2e_request_latency_seconds_bucket{le="+Inf"})')
        assert [s["value"][1] for s in series] == ["2"]

    assert abs(queried - scraped) <= BUCKET_WIDTH
    # both pods serve the same latency mix, so any window gives the demo's p95 exactly
    assert queried == pytest.approx(EXPECTED_P95_SECONDS, abs=1e-9)
    assert scraped == pytest.approx(EXPECTED_P95_SECONDS, abs=1e-9)
    assert demo_seconds > 120, "the fast clock ran: minutes of traffic were in the window"
