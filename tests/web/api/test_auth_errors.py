"""Bearer-token auth (401/403/200), the error model on every 4xx, and configuration errors."""

from __future__ import annotations

import io

import pytest

from aifinops.settings import ConfigError, settings_from_mapping
from aifinops.web.app import create_app
from tests.web.api.conftest import start_finance_demo

READ_TOKEN = "r3ad-t0ken-abcdefghijklmnop"
WRITE_TOKEN = "wr1te-t0ken-qrstuvwxyz012345"


@pytest.fixture
async def secured(aiohttp_client, tmp_path, monkeypatch):
    token_file = tmp_path / "read-token"
    token_file.write_text(READ_TOKEN + "\n")
    monkeypatch.setenv("AIFINOPS_TEST_WRITE_TOKEN", WRITE_TOKEN)
    d = await start_finance_demo(
        aiohttp_client,
        api={
            "require_auth_for_reads": True,
            "read_token_files": [str(token_file)],
            "write_token_env": ["AIFINOPS_TEST_WRITE_TOKEN"],
        },
        tokens={"push": {"enabled": True}},
    )
    await d.refresh()
    try:
        yield d
    finally:
        await d.upstreams.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


USAGE = {"records": [{"tenant": "search", "model": "gpt-4o", "input_tokens": 10}]}


async def test_reads_need_a_token_writes_need_the_write_scope(secured, capsys):
    c = secured.client
    resp = await c.get("/api/v1/budgets")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"]["code"] == "unauthorized"

    resp = await c.get("/api/v1/budgets", headers=bearer("wrong"))
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    resp = await c.get("/api/v1/budgets", headers={"Authorization": "Basic abc"})
    assert resp.status == 401

    assert (await c.get("/api/v1/budgets", headers=bearer(READ_TOKEN))).status == 200
    assert (await c.get("/api/v1/summary", headers=bearer(WRITE_TOKEN))).status == 200
    # the what-if calculators change nothing: the read scope is enough
    body = {"benefits": {"hours_saved": 1, "hourly_rate": 1, "headcount": 1}, "ai_cost": {}}
    resp = await c.post("/api/v1/roi/calculate", json=body, headers=bearer(READ_TOKEN))
    assert resp.status == 200
    assert (await c.post("/api/v1/roi/calculate", json=body)).status == 401

    # pushing usage changes state: the write scope
    resp = await c.post("/api/v1/usage", json=USAGE, headers=bearer(READ_TOKEN))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    assert (await c.post("/api/v1/usage", json=USAGE)).status == 401
    resp = await c.post("/api/v1/usage", json=USAGE, headers=bearer(WRITE_TOKEN))
    assert resp.status == 202

    # the OpenAPI document is open; /metrics is not under /api
    assert (await c.get("/api/v1/openapi.json")).status == 200
    assert (await c.get("/metrics")).status == 200

    out = capsys.readouterr()
    assert READ_TOKEN not in out.out + out.err and WRITE_TOKEN not in out.out + out.err


async def test_token_files_are_reread_when_rotated(secured, tmp_path):
    (tmp_path / "read-token").write_text("rotated-token-0123456789\n")
    c = secured.client
    assert (await c.get("/api/v1/budgets", headers=bearer(READ_TOKEN))).status == 401
    resp = await c.get("/api/v1/budgets", headers=bearer("rotated-token-0123456789"))
    assert resp.status == 200


async def test_open_reads_still_reject_a_wrong_token(finance_demo):
    await finance_demo.refresh()
    c = finance_demo.client
    assert (await c.get("/api/v1/budgets")).status == 200
    assert (await c.get("/api/v1/budgets", headers=bearer("nope"))).status == 401


def test_auth_configuration_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="require_auth_for_reads needs at least one token"):
        settings_from_mapping({"api": {"require_auth_for_reads": True}})
    with pytest.raises(ConfigError, match="not an environment variable name"):
        settings_from_mapping({"api": {"read_token_env": ["s3cr3t token!"]}})
    monkeypatch.delenv("AIFINOPS_UNSET_TOKEN", raising=False)
    settings = settings_from_mapping({"api": {"read_token_env": ["AIFINOPS_UNSET_TOKEN"]}})
    with pytest.raises(ConfigError, match="AIFINOPS_UNSET_TOKEN is unset"):
        create_app(settings, run_loop=False)
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    settings = settings_from_mapping({"api": {"write_token_files": [str(empty)]}})
    with pytest.raises(ConfigError, match="missing, unreadable or empty"):
        create_app(settings, run_loop=False)


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "message"),
    [
        ("/api/v1/roi/calculate", b"{not json", 400, None, "body is not JSON"),
        ("/api/v1/roi/calculate", b"[1, 2]", 422, None, "body must be a JSON object"),
        ("/api/v1/roi/calculate", b"{}", 422, None, "give 'initiative'"),
        (
            "/api/v1/roi/calculate",
            b'{"benefits": {"hours_saved": -1}, "ai_cost": {}}',
            422,
            "benefits.hours_saved",
            "greater than or equal to 0",
        ),
        (
            "/api/v1/roi/calculate",
            b'{"benefits": {}, "ai_cost": {}, "colour": "red"}',
            422,
            "colour",
            "unknown field",
        ),
        ("/api/v1/roi/calculate", b'{"period_days": 0, "initiative": "x"}', 422, "period_days", ""),
        (
            "/api/v1/roi/calculate",
            b'{"benefits": {"hours_saved": 1e308, "hourly_rate": 1e308}, "ai_cost": {}}',
            422,
            None,
            "out of range",
        ),
        ("/api/v1/routing/optimize", b"{}", 422, None, "give 'workload'"),
        (
            "/api/v1/routing/optimize",
            b'{"workload": "support-chat", "token_mix": {"input": 0.9, "output": 0.2}}',
            422,
            "token_mix",
            "sum to 1",
        ),
        (
            "/api/v1/routing/optimize",
            b'{"candidates": [{"model": "a", "provider": "p", "quality": 1.5}]}',
            422,
            "candidates.0.quality",
            "less than or equal to 1",
        ),
    ],
)
async def test_bad_bodies_are_4xx_with_the_field(finance_demo, path, body, status, field, message):
    await finance_demo.refresh()
    resp = await finance_demo.client.post(
        path, data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == "invalid_request" and err["field"] == field
    assert message in err["message"]


async def test_routes_methods_and_readiness(finance_demo):
    c = finance_demo.client
    # before the first refresh there is no report: 503 with the error model
    resp = await c.get("/api/v1/summary")
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "unavailable"
    assert resp.headers["Retry-After"]
    await finance_demo.refresh()
    resp = await c.get("/api/v1/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await c.get("/api/v1/roi/calculate")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "invalid_request"
    resp = await c.get("/api/v1/summary?x=1")
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "x"
    resp = await c.post("/api/v1/roi/calculate", data=io.BytesIO(b"x" * (1024 * 1024 + 10)))
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "invalid_request"
