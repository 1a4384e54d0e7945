"""The state file through the real app factory: the full demo (cluster, vLLM and LiteLLM
fakes) on a settable clock; one app is stopped (its cleanup writes the file) and a second
starts from it. Its chargeback and token month-to-date equal those of an app that ran
through, on the same upstreams and the same refresh times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aifinops.demo.finance import finance_config
from aifinops.demo.run import merge_config, start_demo_upstreams
from aifinops.settings import settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from tests.web.conftest import T0, Clock, parse_page

TIMES = [T0 + 10.0 * i for i in range(8)]
RESTART_AFTER = 3  # the first app refreshes at TIMES[:4], the second at TIMES[4:]


async def _run(aiohttp_client: Any, config: dict[str, Any], clock: Clock, times: list[float]):
    app = create_app(settings_from_mapping(config), clock=clock, run_loop=False)
    client = await aiohttp_client(app)
    for t in times:
        clock.now = t
        await client.app[REFRESHER].refresh_once()
    return client


async def _figures(client: Any) -> tuple[dict[str, Any], dict[tuple[str, str], float], Any]:
    # The exporter's own ledger (the usage basis comes only from it): what the state file
    # must carry across the restart. (The allocation basis is OpenCost's books, refetched.)
    resp = await client.get("/api/v1/chargeback?period=2025-06&basis=usage")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["source"] == "exporter_ledger"
    finance = client.app[REFRESHER].snapshot.finance
    assert finance is not None
    tokens = {k: v for k, v in finance.month_to_date.items() if k[1] == "tokens"}
    page = parse_page(await (await client.get("/metrics")).text())
    return await resp.json(), tokens, page


async def test_an_app_restarted_from_the_state_file_matches_one_that_ran_through(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    clock = Clock(T0)
    ups = await start_demo_upstreams(clock=clock)
    try:
        base = merge_config(ups.config(), finance_config(ups.cluster.sim, T0))
        whole = await _run(aiohttp_client, base, clock, TIMES)
        want_cb, want_tokens, _ = await _figures(whole)
        await whole.close()

        path = tmp_path / "state.json"
        config = {**base, "state": {"path": str(path), "save_interval_seconds": 3600}}
        first = await _run(aiohttp_client, config, clock, TIMES[: RESTART_AFTER + 1])
        assert path.exists()  # written after the first refresh; the interval holds the rest
        clock.now = TIMES[RESTART_AFTER] + 1.0
        await first.close()  # the app's cleanup writes the last refresh's state
        text = path.read_text(encoding="utf-8")
        written = json.loads(text)
        # nothing personal: the fake LiteLLM's e-mail, API key aliases and hashes stay out
        for secret in ("alice@example.com", "@", "-key-", "hashed_api_key", "api_key_alias"):
            assert secret not in text, secret
        assert written["saved_at"] == TIMES[RESTART_AFTER] + 1.0
        assert written["payload"]["refreshed_at"] == TIMES[RESTART_AFTER]
        clock.now = TIMES[RESTART_AFTER + 1]
        second = await _run(aiohttp_client, config, clock, TIMES[RESTART_AFTER + 1 :])
        got_cb, got_tokens, page = await _figures(second)
        await second.close()
    finally:
        await ups.close()

    assert want_tokens and all(v > 0 for v in want_tokens.values())
    assert got_tokens == pytest.approx(want_tokens, rel=1e-9)
    assert got_cb["total_usd"] == pytest.approx(want_cb["total_usd"], abs=0.011)
    want_rows = {(r["tenant"], r["resource"]): r["amount_usd"] for r in want_cb["rows"]}
    got_rows = {(r["tenant"], r["resource"]): r["amount_usd"] for r in got_cb["rows"]}
    assert got_rows.keys() == want_rows.keys()
    assert got_rows == pytest.approx(want_rows, abs=0.011)  # cents, rounded per row
    assert any(resource == "tokens" and usd > 0 for (_, resource), usd in got_rows.items())
    # the state file's self-metrics
    (errors,) = page["aifinops_state_save_errors_total"]
    assert errors[1] == 0
    (saved,) = page["aifinops_state_last_save_timestamp_seconds"]
    assert saved[1] == TIMES[RESTART_AFTER + 1]


async def test_without_a_state_file_there_is_none_of_it(aiohttp_client: Any) -> None:
    clock = Clock(T0)
    ups = await start_demo_upstreams(clock=clock)
    try:
        client = await _run(aiohttp_client, ups.config(), clock, TIMES[:1])
        page = parse_page(await (await client.get("/metrics")).text())
        await client.close()
    finally:
        await ups.close()
    assert "aifinops_state_save_errors_total" not in page
