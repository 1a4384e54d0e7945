"""TLS and basic auth on the exporter's pages (exporter-toolkit web-config shape), request
body limits, and the push endpoint's per-client rate limit."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from aifinops.settings import ConfigError, settings_from_mapping
from aifinops.web.app import create_app
from aifinops.web.ratelimit import RateLimiter
from aifinops.web.security import WEB_SECURITY, load_web_config, parse_web_config
from tests.tools import require_binary

PASSWORD = "s3cret-Pa55"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def write_web_config(path: Path, **config: Any) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def app_with(web_config: Path | None = None, **extra: Any) -> web.Application:
    data: dict[str, Any] = {"server": {"web_config_file": web_config}} if web_config else {}
    data.update(extra)
    return create_app(settings_from_mapping(data), run_loop=False)


async def test_basic_auth_guards_the_pages_but_not_the_probes(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    cfg = write_web_config(
        tmp_path / "web.yaml", basic_auth_users={"prometheus": bcrypt_hash(PASSWORD)}
    )
    client = await aiohttp_client(app_with(cfg))
    with capture_logs() as logs:
        for headers in (
            {},
            basic("prometheus", "wrong"),
            basic("nobody", PASSWORD),
            {"Authorization": "Basic !!!"},
            {"Authorization": "Bearer x"},
        ):
            for path in ("/metrics", "/"):
                resp = await client.get(path, headers=headers)
                assert resp.status == 401, (path, headers)
                assert resp.headers["WWW-Authenticate"].startswith("Basic ")
        ok = await client.get("/metrics", headers=basic("prometheus", PASSWORD))
        assert ok.status == 200
        assert b"aifinops_build_info" in await ok.read()
        for path in ("/healthz", "/readyz", "/api/v1/openapi.json"):
            resp = await client.get(path)
            assert resp.status != 401, path
    assert PASSWORD not in repr(logs) and "wrong" not in repr(logs)


async def test_users_change_without_a_restart(aiohttp_client: Any, tmp_path: Path) -> None:
    cfg = write_web_config(tmp_path / "web.yaml", basic_auth_users={"a": bcrypt_hash("pa")})
    client = await aiohttp_client(app_with(cfg))
    assert (await client.get("/metrics", headers=basic("a", "pa"))).status == 200
    write_web_config(cfg, basic_auth_users={"b": bcrypt_hash("pb")})
    assert (await client.get("/metrics", headers=basic("a", "pa"))).status == 401
    assert (await client.get("/metrics", headers=basic("b", "pb"))).status == 200
    # a broken new version is refused: the last good one stays
    cfg.write_text("basic_auth_users: [")
    with capture_logs() as logs:
        assert (await client.get("/metrics", headers=basic("b", "pb"))).status == 200
    assert [e["event"] for e in logs] == ["web_config_reload_failed"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("basic_auth_users: {prometheus: plaintext-password}", "bcrypt hash"),
        ("basic_auth_users: {prometheus: $2b$12$tooshort}", "malformed"),
        ("tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}", "cannot"),
        ("http_server_config: {http3: true}", "unknown field"),
        ("[1, 2]", "mapping"),
        ("basic_auth_users: {'a:b': $2b$04$abcdefghijklmnopqrstuu}", "':'"),
    ],
)
def test_bad_web_config_is_a_config_error(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_web_config(text, "web.yaml")
    assert "plaintext-password" not in str(info.value)


def test_bad_web_config_file_stops_start_up(tmp_path: Path) -> None:
    cfg = tmp_path / "web.yaml"
    cfg.write_text("basic_auth_users: {u: nope}")
    with pytest.raises(ConfigError):
        app_with(cfg)
    with pytest.raises(ConfigError, match="cannot read"):
        load_web_config(tmp_path / "missing.yaml")


def make_cert(tmp_path: Path, name: str) -> tuple[Path, Path]:
    openssl = require_binary("openssl")
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_and_certificate_rotation(tmp_path: Path) -> None:
    cert1, key1 = make_cert(tmp_path, "one")
    cert2, key2 = make_cert(tmp_path, "two")
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    live_cert.write_bytes(cert1.read_bytes())
    live_key.write_bytes(key1.read_bytes())
    cfg = write_web_config(
        tmp_path / "web.yaml",
        tls_server_config={"cert_file": str(live_cert), "key_file": str(live_key)},
        basic_auth_users={"p": bcrypt_hash("pw")},
    )
    app = app_with(cfg)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, "127.0.0.1", 0, ssl_context=app[WEB_SECURITY].server_ssl_context()
        )
        await site.start()
        port = runner.addresses[0][1]
        url = f"https://127.0.0.1:{port}/metrics"
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert1)) as c:
            assert (await c.get(url, headers=basic("p", "pw"))).status_code == 200
            assert (await c.get(url)).status_code == 401
        async with httpx.AsyncClient() as c:
            with pytest.raises(httpx.TransportError):
                await c.get(f"http://127.0.0.1:{port}/metrics")
        # cert-manager renews the Secret: the next handshake presents the new certificate
        live_cert.write_bytes(cert2.read_bytes())
        live_key.write_bytes(key2.read_bytes())
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert2)) as c:
            assert (await c.get(url, headers=basic("p", "pw"))).status_code == 200
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert1)) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(url)
    finally:
        await runner.cleanup()


async def test_request_bodies_are_bounded(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(
        app_with(
            server={"max_request_body_bytes": 64 * 1024},
            tokens={"push": {"enabled": True, "max_body_bytes": 32 * 1024}},
        )
    )
    big = b"{" + b" " * (200 * 1024) + b"}"
    resp = await client.post(
        "/api/v1/roi/calculate", data=big, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    resp = await client.post("/api/v1/usage", data=big)
    assert resp.status == 413
    assert (await resp.json())["error"] == "body_too_large"
    # a header line over aiohttp's limit is refused, not buffered
    resp = await client.get("/metrics", headers={"X-Big": "x" * 20_000})
    assert resp.status in (400, 431)


async def test_push_is_rate_limited_per_client(aiohttp_client: Any, tmp_path: Path) -> None:
    token_a, token_b = tmp_path / "a", tmp_path / "b"
    token_a.write_text("token-a-123")
    token_b.write_text("token-b-456")
    client = await aiohttp_client(
        app_with(
            tokens={"push": {"enabled": True, "rate_limit_per_second": 0.5, "rate_limit_burst": 2}},
            api={"write_token_files": [str(token_a), str(token_b)]},
        )
    )
    batch = {"records": [{"tenant": "t", "model": "m", "input_tokens": 1}]}
    a = {"Authorization": "Bearer token-a-123"}
    b = {"Authorization": "Bearer token-b-456"}
    with capture_logs() as logs:
        assert [
            (await client.post("/api/v1/usage", json=batch, headers=a)).status for _ in range(2)
        ] == [202, 202]
        limited = await client.post("/api/v1/usage", json=batch, headers=a)
        assert limited.status == 429
        assert (await limited.json())["error"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 2
        # another token has its own bucket
        assert (await client.post("/api/v1/usage", json=batch, headers=b)).status == 202
    assert "token-a-123" not in repr(logs) and "token-b-456" not in repr(logs)


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("x") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("x") == pytest.approx(0.5)
    now[0] = 0.5  # one token back
    assert limiter.take("x") == 0.0
    assert limiter.take("y") == 0.0  # its own bucket
    now[0] = 100.0  # refills up to the burst, not beyond
    assert [limiter.take("x") for _ in range(4)][-1] > 0
    assert RateLimiter(rate=0, burst=1).take("x") == 0.0  # off
