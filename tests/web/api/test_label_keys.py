"""With the OpenCost sources keeping only the label keys the configuration reads, the app's
pages and answers under the demo's finance configuration (tenancy by pod and namespace
labels, the spot label) are exactly those it gives with the label maps kept whole."""

from __future__ import annotations

from typing import Any

import pytest

from aifinops import assemble
from tests.web.api.conftest import T0, start_finance_demo

ANSWERS = ("/api/v1/summary", "/api/v1/budgets", "/api/v1/recommendations", "/api/v1/chargeback")
# Self-metrics that time the refresh or count bytes differ run to run, whatever the labels.
VOLATILE = ("duration", "seconds_total", "bytes", "last_success", "timestamp", "process_")


def stable(page: str) -> list[str]:
    return [line for line in page.splitlines() if not any(v in line for v in VOLATILE)]


async def run(aiohttp_client: Any, **extra: Any) -> tuple[list[str], dict[str, Any]]:
    demo = await start_finance_demo(aiohttp_client, **extra)
    try:
        await demo.refresh()
        demo.clock.now = T0 + 960  # past the idle window: every recommendation kind
        await demo.refresh()
        page = await (await demo.client.get("/metrics")).text()
        answers = {path: await (await demo.client.get(path)).json() for path in ANSWERS}
        return stable(page), answers
    finally:
        await demo.upstreams.close()


async def test_pages_and_answers_equal_those_of_whole_label_maps(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = await run(aiohttp_client)
    assert any(r["kind"] == "spot" for r in kept[1]["/api/v1/recommendations"]["recommendations"])
    with monkeypatch.context() as m:
        m.setattr(assemble, "allocation_label_keys", lambda settings: None)
        whole = await run(aiohttp_client)
    assert kept[0] == whole[0]
    assert kept[1] == whole[1]


async def test_the_spot_label_read_changes_the_recommendations(aiohttp_client: Any) -> None:
    # Another spot label key: the demo's fault-tolerant pods are no longer candidates.
    _, answers = await run(
        aiohttp_client, recommendations={"spot": {"label_key": "example.com/preemptible"}}
    )
    assert not any(
        r["kind"] == "spot" for r in answers["/api/v1/recommendations"]["recommendations"]
    )
