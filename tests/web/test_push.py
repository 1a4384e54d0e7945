"""POST /api/v1/usage through the real app: validation, bounds, idempotency, and the series."""

from __future__ import annotations

from typing import Any

import pytest

from aifinops.settings import settings_from_mapping
from aifinops.usage import UsageBatch, UsageRecord, UsageStore
from aifinops.web.app import REFRESHER, create_app
from tests.upstream_data import price_subset
from tests.web.conftest import parse_page, series

T0 = 1_750_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def make_client(aiohttp_client, tmp_path=None, **push: Any):
    push = {"enabled": True, "max_records_per_batch": 3, "max_body_bytes": 4096, **push}
    settings = settings_from_mapping({"tokens": {"push": push}})
    clock = Clock()
    client = await aiohttp_client(create_app(settings, run_loop=False, clock=clock))
    return client, clock


def rec(**kw: Any) -> dict[str, Any]:
    return {"tenant": "search", "model": "gpt-4o", "input_tokens": 1000, **kw}


async def test_accepted_batch_shows_up_priced_in_metrics(aiohttp_client):
    client, clock = await make_client(aiohttp_client)
    await client.app[REFRESHER].refresh_once()
    resp = await client.post(
        "/api/v1/usage",
        json={
            "records": [
                rec(
                    output_tokens=200,
                    cached_input_tokens=400,
                    record_id="r1",
                    timestamp="2025-06-15T12:00:00Z",
                ),
                rec(
                    tenant="ads",
                    model="claude-sonnet-4-5",
                    provider="anthropic",
                    input_tokens=10,
                    timestamp=1_750_000_000,
                ),
            ]
        },
    )
    assert resp.status == 202
    assert await resp.json() == {"accepted": 2, "duplicates": 0}
    clock.now += 30
    await client.app[REFRESHER].refresh_once()
    page = parse_page(await (await client.get("/metrics")).text())
    tokens = series(page, "aifinops_tokens_total")
    assert tokens[("gpt-4o", "openai", "search", "input")] == 1000
    assert tokens[("gpt-4o", "openai", "search", "cached_input")] == 400
    assert tokens[("claude-sonnet-4-5", "anthropic", "ads", "input")] == 10
    cost = series(page, "aifinops_token_cost_usd_total", tenant="search")
    p = price_subset()["gpt-4o"]
    assert cost[("gpt-4o", "openai", "output")] == pytest.approx(200 * p["output_cost_per_token"])
    assert cost[("gpt-4o", "openai", "cached_input")] == pytest.approx(
        400 * p["cache_read_input_token_cost"]
    )
    total = series(page, "aifinops_tenant_cost_usd_total", tenant="search", resource="tokens")
    assert total[()] == pytest.approx(
        1000 * p["input_cost_per_token"]
        + 200 * p["output_cost_per_token"]
        + 400 * p["cache_read_input_token_cost"]
    )
    assert series(page, "aifinops_source_up", source="tokens:push") == {(): 1.0}


async def test_retried_records_are_duplicates_not_double_counted(aiohttp_client):
    client, _ = await make_client(aiohttp_client)
    body = {"records": [rec(record_id="a"), rec(record_id="b"), rec(record_id="a")]}
    first = await client.post("/api/v1/usage", json=body)
    assert await first.json() == {"accepted": 2, "duplicates": 1}
    again = await client.post("/api/v1/usage", json=body)
    assert again.status == 202
    assert await again.json() == {"accepted": 0, "duplicates": 3}
    no_id = await client.post("/api/v1/usage", json={"records": [rec(), rec()]})
    assert await no_id.json() == {"accepted": 2, "duplicates": 0}
    await client.app[REFRESHER].refresh_once()
    page = parse_page(await (await client.get("/metrics")).text())
    assert series(page, "aifinops_tokens_total", tenant="search", token_type="input") == {
        ("gpt-4o", "openai"): 4000
    }


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"records": []}', 422, "invalid_record"),
        (
            b'{"records": [{"tenant": "a", "model": "m", "input_tokens": -1}]}',
            422,
            "invalid_record",
        ),
        (
            b'{"records": [{"tenant": "a", "model": "m", "input_tokens": 1.5}]}',
            422,
            "invalid_record",
        ),
        (
            b'{"records": [{"tenant": "a", "model": "m", "input_tokens": true}]}',
            422,
            "invalid_record",
        ),
        (b'{"records": [{"tenant": "a", "model": "m", "user": "bob"}]}', 422, "invalid_record"),
        (b'{"records": [{"tenant": "bob@example.com", "model": "m"}]}', 422, "invalid_record"),
        (b'{"records": [{"tenant": "a\\nb", "model": "m"}]}', 422, "invalid_record"),
        (b'{"records": [{"tenant": "__idle__", "model": "m"}]}', 422, "invalid_record"),
        (
            b'{"records": [{"tenant": "a", "model": "m", "timestamp": "yesterday"}]}',
            422,
            "invalid_record",
        ),
        (b'{"records": [], "extra": 1}', 422, "invalid_record"),
        (b"[1, 2]", 422, "invalid_record"),
        (b'{"records": [{}, {}, {}, {}]}', 413, "too_many_records"),
        (
            b'{"records": [{"tenant": "a", "model": "m", "output_tokens": 2000000000}]}',
            422,
            "too_many_tokens",
        ),
        (b"{" + b" " * 5000 + b"}", 413, "body_too_large"),
    ],
)
async def test_rejections_are_machine_readable_and_add_nothing(
    aiohttp_client, body, status, reason
):
    client, _ = await make_client(aiohttp_client)
    resp = await client.post(
        "/api/v1/usage", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == status
    doc = await resp.json()
    assert doc["error"] == reason and doc["message"]
    if reason == "invalid_record" and body.startswith(b'{"records": [{'):
        assert doc["details"][0]["field"].startswith("records.0")
    await client.app[REFRESHER].refresh_once()
    page = parse_page(await (await client.get("/metrics")).text())
    assert "aifinops_tokens_total" not in page


async def test_bearer_token_is_required_when_configured(aiohttp_client, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    client, _ = await make_client(aiohttp_client, bearer_token_file=str(token))
    body = {"records": [rec()]}
    assert (await client.post("/api/v1/usage", json=body)).status == 401
    bad = await client.post("/api/v1/usage", json=body, headers={"Authorization": "Bearer x"})
    assert bad.status == 401 and (await bad.json())["error"] == "unauthorized"
    ok = await client.post("/api/v1/usage", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 202


async def test_push_is_off_unless_enabled(aiohttp_client):
    client = await aiohttp_client(create_app(settings_from_mapping({}), run_loop=False))
    assert (await client.post("/api/v1/usage", json={"records": [rec()]})).status in (404, 405)


def test_store_series_limit_and_lru():
    store = UsageStore(max_series=2, idempotency_cache_size=2)
    ok = UsageBatch(records=[UsageRecord(tenant="a", model="m", input_tokens=1, output_tokens=1)])
    assert store.apply(ok).accepted == 1
    from aifinops.usage import UsageRejected

    with pytest.raises(UsageRejected) as err:
        store.apply(UsageBatch(records=[UsageRecord(tenant="b", model="m", input_tokens=1)]))
    assert err.value.reason == "series_limit" and err.value.status == 422
    for rid in ("x", "y", "z"):
        store.apply(
            UsageBatch(records=[UsageRecord(tenant="a", model="m", input_tokens=1, record_id=rid)])
        )
    # "x" fell out of the 2-entry idempotency cache: it is accepted again
    again = store.apply(
        UsageBatch(records=[UsageRecord(tenant="a", model="m", input_tokens=1, record_id="x")])
    )
    assert again.accepted == 1
    snap = store.snapshot()
    assert {(o.token_type, o.value) for o in snap} == {("input", 5.0), ("output", 1.0)}
    assert all(o.from_zero and o.source == "tokens:push" for o in snap)
