"""Every key of the exporter-toolkit's web configuration (docs/web-configuration.md of
prometheus/exporter-toolkit, commit 19a7c2d5) is accepted: applied where Python's ssl and
aiohttp can, else accepted with one logged warning. Served over real TLS sockets."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from aifinops.settings import ConfigError, settings_from_mapping
from aifinops.web.app import create_app
from aifinops.web.security import (
    GO_CIPHER_SUITES,
    WEB_SECURITY,
    WebSecurity,
    parse_go_duration,
    parse_web_config,
)
from tests.security.test_web_security import basic, bcrypt_hash, make_cert

# The keys the toolkit's documentation lists (tls_server_config, http_server_config,
# basic_auth_users, rate_limit and their children).
TOOLKIT_TLS_KEYS = {
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
}


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_model_has_every_toolkit_key() -> None:
    from aifinops.web.security import HttpServerConfig, RateLimitConfig, TlsServerConfig, WebConfig

    assert set(WebConfig.model_fields) == {
        "tls_server_config",
        "http_server_config",
        "basic_auth_users",
        "rate_limit",
    }
    assert set(TlsServerConfig.model_fields) == TOOLKIT_TLS_KEYS
    assert set(HttpServerConfig.model_fields) == {"http2", "headers"}
    assert set(RateLimitConfig.model_fields) == {"interval", "burst"}


def test_a_file_with_every_key_loads(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "srv")
    config = {
        "tls_server_config": {
            "cert": cert.read_text(),
            "key": key.read_text(),
            "client_ca": cert.read_text(),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_allowed_sans": ["127.0.0.1"],
            "min_version": "TLS12",
            "max_version": "TLS13",
            "cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
            "prefer_server_cipher_suites": False,
            "curve_preferences": ["X25519", "CurveP256"],
        },
        "http_server_config": {"http2": True, "headers": {"X-Frame-Options": "deny"}},
        "basic_auth_users": {"p": bcrypt_hash("pw")},
        "rate_limit": {"interval": "100ms", "burst": 5},
    }
    path = write(tmp_path / "web.yml", config)
    with capture_logs() as logs:
        sec = WebSecurity.from_file(path)
    assert sec.config.rate_limit.interval == pytest.approx(0.1)
    # one warning per key that cannot apply, naming it and why
    warned = {e["key"]: e["reason"] for e in logs if e["event"] == "web_config_key_not_applied"}
    assert set(warned) == {"tls_server_config.curve_preferences", "http_server_config.http2"}
    assert "HTTP/1.1" in warned["http_server_config.http2"]
    assert len(logs) == 2
    # the inline key is never shown
    assert "PRIVATE KEY" not in repr(sec.config)


@pytest.mark.parametrize(
    ("tls", "needle"),
    [
        ({"cert_file": "a.crt"}, "missing one of key or key_file"),
        ({"cert": "x", "cert_file": "a", "key_file": "b"}, "not both"),
        ({"cert_file": "a", "key_file": "b", "min_version": "TLS13", "max_version": "TLS12"},
         "above max_version"),
        ({"cert_file": "a", "key_file": "b", "cipher_suites": ["RC4"]}, "unknown cipher"),
        ({"cert_file": "a", "key_file": "b", "curve_preferences": ["P-256"]}, "unknown curve"),
        ({"cert_file": "a", "key_file": "b", "client_ca_file": "c"}, "without a client_auth"),
        ({"cert_file": "a", "key_file": "b", "client_allowed_sans": ["x"]}, "verifies client"),
        ({"cert_file": "a", "key_file": "b", "max_version": "TLS14"}, "max_version"),
    ],
)  # fmt: skip
def test_bad_tls_keys_name_the_field(tls: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_web_config(yaml.safe_dump({"tls_server_config": tls}), "web.yml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("http_server_config: {headers: {X-Powered-By: me}}", "can not be configured"),
        ("http_server_config: {headers: {X-Frame-Options: allow}}", "deny"),
        ("rate_limit: {interval: 5 seconds, burst: 1}", "duration"),
        ("rate_limit: {interval: 1s, burst: 0}", "burst"),
    ],
)
def test_bad_http_and_rate_keys(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_web_config(text, "web.yml")


def test_go_durations() -> None:
    assert parse_go_duration("1m30s") == 90.0
    assert parse_go_duration("250ms") == pytest.approx(0.25)
    assert parse_go_duration("0") == 0.0
    for bad in ("", "1", "1d", "s", True):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_every_go_cipher_maps_to_an_openssl_cipher() -> None:
    for go_name, openssl_name in GO_CIPHER_SUITES.items():
        if openssl_name is None:
            assert go_name.count("_WITH_") == 0  # the TLS 1.3 suites
            continue
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers(openssl_name)  # raises SSLError for an unknown name
        assert openssl_name in {c["name"] for c in ctx.get_ciphers()}, go_name


def test_relative_paths_are_read_from_the_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    make_cert(folder, "srv")
    path = write(folder / "web.yml", {"tls_server_config": {"cert_file": "srv.crt",
                                                             "key_file": "srv.key"}})  # fmt: skip
    tls = WebSecurity.from_file(path).config.tls_server_config
    assert tls is not None and tls.cert_file == folder / "srv.crt"


async def serve(web_config: Path) -> AsyncIterator[tuple[str, Path]]:
    app = create_app(
        settings_from_mapping({"server": {"web_config_file": str(web_config)}}), run_loop=False
    )
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = app[WEB_SECURITY].server_ssl_context()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        scheme = "https" if ctx is not None else "http"
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", web_config
    finally:
        await runner.cleanup()


async def test_inline_pem_versions_and_ciphers(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "srv")
    cfg = write(
        tmp_path / "web.yml",
        {
            "tls_server_config": {
                "cert": cert.read_text(),
                "key": key.read_text(),
                "max_version": "TLS12",
                "cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"],
            }
        },
    )
    async for url, _ in serve(cfg):
        client_ctx = ssl.create_default_context(cafile=cert)
        async with httpx.AsyncClient(verify=client_ctx) as c:
            resp = await c.get(f"{url}/metrics")
            assert resp.status_code == 200
            stream = resp.extensions["network_stream"]
            sslobj = stream.get_extra_info("ssl_object")
            assert sslobj.version() == "TLSv1.2"
            assert sslobj.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"


async def test_client_allowed_sans(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "srv")
    client_cert, client_key = make_cert(tmp_path, "client")  # SAN IP:127.0.0.1, self-signed

    def config(sans: list[str]) -> dict[str, Any]:
        return {
            "tls_server_config": {
                "cert_file": str(cert),
                "key_file": str(key),
                "client_ca_file": str(client_cert),
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_allowed_sans": sans,
            }
        }

    client_ctx = ssl.create_default_context(cafile=cert)
    client_ctx.load_cert_chain(client_cert, client_key)
    async for url, path in serve(write(tmp_path / "web.yml", config(["127.0.0.1"]))):
        async with httpx.AsyncClient(verify=client_ctx) as c:
            assert (await c.get(f"{url}/metrics")).status_code == 200
        write(path, config(["10.9.9.9", "prometheus.example"]))
        async with httpx.AsyncClient(verify=client_ctx) as c:
            refused = await c.get(f"{url}/metrics")
            assert refused.status_code == 403
            assert "allowed SAN" in refused.text


async def test_rate_limit_and_headers(aiohttp_client: Any, tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "web.yml",
        {
            "rate_limit": {"interval": "1h", "burst": 2},
            "http_server_config": {
                "headers": {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}
            },
            "basic_auth_users": {"p": bcrypt_hash("pw")},
        },
    )
    app = create_app(
        settings_from_mapping({"server": {"web_config_file": str(cfg)}}), run_loop=False
    )
    client = await aiohttp_client(app)
    ok = await client.get("/metrics", headers=basic("p", "pw"))
    denied = await client.get("/metrics")
    assert (ok.status, denied.status) == (200, 401)
    limited = await client.get("/metrics", headers=basic("p", "pw"))
    assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    missing = await client.get("/healthz")  # probes are never limited
    assert missing.status == 200
    for resp in (ok, denied, limited, missing):
        assert resp.headers["X-Frame-Options"] == "deny", resp.status
        assert resp.headers["X-Content-Type-Options"] == "nosniff", resp.status


def test_a_fifo_or_dev_zero_web_config_fails_fast(tmp_path: Path) -> None:
    """A web configuration path that is a FIFO (no writer) or a symlink to /dev/zero is refused
    at once, naming the file, instead of blocking start-up or reading until memory runs out."""
    from aifinops.web.security import load_web_config

    fifo = tmp_path / "web.fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "web-zero.yml"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        started = time.monotonic()
        with pytest.raises(ConfigError, match="not a regular file"):
            load_web_config(path)
        assert time.monotonic() - started < 2
