"""Upstream TLS and credentials (issue 14, items 4 and 9): a local HTTPS upstream whose CA,
server and client certificates are made in the test with the ``openssl`` CLI. The server
requires a client certificate from that CA and answers what it saw.

Through the real app (``create_app`` builds the one client, ``sources/upstream.py``), the
OpenCost source reaches the server only with ``tls.ca_file``, ``cert_file``/``key_file`` and
``server_name`` set; verification is on by default (the self-signed CA is refused without
``ca_file``); ``basic_auth`` sends a password read from a file.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aifinops.assemble import routes as upstream_routes
from aifinops.settings import ConfigError, settings_from_mapping
from aifinops.sources.upstream import build_client
from aifinops.web.app import REFRESHER, create_app
from tests.tools import require_binary

SERVER_NAME = "opencost.internal"  # not the address connected to: server_name must say it


def _openssl(*args: str) -> None:
    subprocess.run([require_binary("openssl"), *args], check=True, capture_output=True)


def _signed(d: Path, ca: tuple[Path, Path], name: str, ext: str) -> tuple[Path, Path]:
    key, csr, crt, extfile = (d / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))  # fmt: skip
    extfile.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n{ext}\n"
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "1", "-out", str(crt),
             "-extfile", str(extfile))  # fmt: skip
    return crt, key


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = (d / "ca.crt", d / "ca.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=aifinops-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(ca[1]), "-out", str(ca[0]))  # fmt: skip
    server = _signed(
        d, ca, SERVER_NAME, f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth"
    )
    client = _signed(d, ca, "aifinops-exporter", "extendedKeyUsage=clientAuth")
    return Pki(ca[0], server, client)


@dataclass
class Upstream:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def upstream(pki: Pki) -> AsyncIterator[Upstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(pki.server[0], pki.server[1])
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no answer
    up = Upstream("")

    async def allocation(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        up.seen.append(
            {"client": subject.get("commonName"), "auth": request.headers.get("Authorization")}
        )
        # OpenCost's answer while its cache is empty: the source calls it "invalid", which
        # proves the request went through TLS and was answered
        return web.json_response({"code": 200, "data": [{}]})

    app = web.Application()
    app.router.add_get("/allocation/compute", allocation)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    up.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield up
    finally:
        await runner.cleanup()


def _config(url: str, **opencost: Any) -> dict[str, Any]:
    return {"sources": {"opencost": {"url": url, "timeout_seconds": 5, **opencost}}}


async def _opencost_error(aiohttp_client: Any, config: dict[str, Any]) -> dict[str, int]:
    client = await aiohttp_client(create_app(settings_from_mapping(config), run_loop=False))
    snap = await client.app[REFRESHER].refresh_once()
    assert snap.status is not None
    (status,) = [s for s in snap.status.sources if s.name == "opencost"]
    return dict(status.errors)


async def test_mutual_tls_with_a_private_ca_and_server_name(
    aiohttp_client: Any, upstream: Upstream, pki: Pki, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    tls = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client[0]),
        "key_file": str(pki.client[1]),
        "server_name": SERVER_NAME,
    }
    auth = {"username": "finops", "password_file": str(password)}
    errors = await _opencost_error(aiohttp_client, _config(upstream.url, tls=tls, basic_auth=auth))
    assert errors == {"invalid": 1}  # reached and answered, not a TLS failure
    # every OpenCost query (allocation, and the month to date in pieces), each with the
    # client certificate and finops:hunter2
    want = {"client": "aifinops-exporter", "auth": "Basic Zmlub3BzOmh1bnRlcjI="}
    assert len(upstream.seen) >= 2 and all(seen == want for seen in upstream.seen)


@pytest.mark.parametrize(
    "tls",
    [
        {},  # verification on by default: the test CA is not in the system store
        {"server_name": SERVER_NAME},  # the same without ca_file
        {"ca_file": "CA", "server_name": "other.internal"},  # a name the certificate lacks
        {"ca_file": "CA"},  # the URL's 127.0.0.1 is not in the certificate either
        {"ca_file": "CA", "server_name": SERVER_NAME},  # no client certificate
    ],
    ids=["default", "no-ca", "wrong-name", "ip-not-in-cert", "no-client-cert"],
)
async def test_what_must_not_connect(
    aiohttp_client: Any, upstream: Upstream, pki: Pki, tls: dict[str, str]
) -> None:
    tls = {k: str(pki.ca) if v == "CA" else v for k, v in tls.items()}
    errors = await _opencost_error(aiohttp_client, _config(upstream.url, tls=tls))
    assert errors == {"connect": 1}
    assert upstream.seen == []


async def test_insecure_skip_verify_and_bearer_from_the_environment(
    upstream: Upstream, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENCOST_TOKEN", "t0ken")
    tls = {
        "insecure_skip_verify": True,
        "cert_file": str(pki.client[0]),
        "key_file": str(pki.client[1]),
    }
    settings = settings_from_mapping(
        _config(upstream.url, tls=tls, bearer_token_env="OPENCOST_TOKEN")
    )
    client, _ = build_client(upstream_routes(settings))
    async with client:
        resp = await client.get(f"{upstream.url}/allocation/compute")
        assert resp.status_code == 200
    assert upstream.seen[0] == {"client": "aifinops-exporter", "auth": "Bearer t0ken"}


@pytest.mark.parametrize(
    ("opencost", "needle"),
    [
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "sources.opencost.tls"),
        ({"basic_auth": {"username": "u", "password_file": "/nonexistent"}}, "password_file"),
        ({"bearer_token_env": "AIFINOPS_TEST_UNSET_VARIABLE"}, "bearer_token_env"),
    ],
)
def test_unusable_tls_or_credentials_stop_start_up_naming_the_field(
    opencost: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        create_app(settings_from_mapping(_config("https://opencost:9003", **opencost)))


@pytest.mark.parametrize(
    ("opencost", "needle"),
    [
        ({"tls": {"cert_file": "/c.pem"}}, "cert_file and key_file go together"),
        ({"basic_auth": {"username": "u", "password_env": "P", "password_file": "/f"}}, "exactly"),
        ({"bearer_token_env": "X", "bearer_token_file": "/t"}, "at most one credential"),
        ({"bearer_token_env": "s3cr3t-token-value!"}, "variable's name"),
    ],
)
def test_settings_refuse_ambiguous_credentials(opencost: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings_from_mapping(_config("https://opencost:9003", **opencost))


async def test_a_reload_swaps_the_tls_settings_and_refuses_unusable_ones(
    aiohttp_client: Any, upstream: Upstream, pki: Pki
) -> None:
    from aifinops.web.lifecycle import RELOADER

    good = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client[0]),
        "key_file": str(pki.client[1]),
        "server_name": SERVER_NAME,
    }
    app = create_app(settings_from_mapping(_config(upstream.url)), run_loop=False)
    client = await aiohttp_client(app)
    reloader = client.app[RELOADER]

    async def errors() -> dict[str, int]:
        snap = await client.app[REFRESHER].refresh_once()
        assert snap.status is not None
        (status,) = [s for s in snap.status.sources if s.name == "opencost"]
        return dict(status.errors)

    assert await errors() == {"connect": 1}  # the test CA is not trusted by default
    reloader.load = lambda: settings_from_mapping(_config(upstream.url, tls=good))
    assert await reloader.reload() == (True, "")
    assert await errors() == {"connect": 1, "invalid": 1}  # reached through the new pool
    bad = {**good, "ca_file": "/nonexistent/ca.pem"}
    reloader.load = lambda: settings_from_mapping(_config(upstream.url, tls=bad))
    ok, message = await reloader.reload()
    assert not ok and "sources.opencost.tls" in message
    assert await errors() == {"connect": 1, "invalid": 2}  # the old settings still apply


def test_the_cli_exits_2_naming_an_unusable_ca(tmp_path: Path) -> None:

    import yaml

    from tests.lifecycle.proc import free_port, run_cli

    config = tmp_path / "config.yaml"
    tls = {"ca_file": str(tmp_path / "missing-ca.pem")}
    config.write_text(yaml.safe_dump(_config("https://opencost:9003", tls=tls)))
    proc = run_cli("--config", str(config), "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr
    assert "sources.opencost.tls" in proc.stderr and "Traceback" not in proc.stderr


def test_credentials_stay_with_their_upstreams_url(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from aifinops.sources.upstream import UpstreamTransport

    monkeypatch.setenv("OC_PASSWORD", "pw")
    auth = {"username": "oc", "password_env": "OC_PASSWORD"}
    litellm = {"name": "gw", "preset": "litellm", "prometheus_url": "http://h:9003/prom"}
    settings = settings_from_mapping(
        {**_config("http://h:9003", basic_auth=auth), "tokens": {"sources": [litellm]}}
    )
    transport = UpstreamTransport(upstream_routes(settings))
    oc = transport.route_for(httpx.URL("http://h:9003/allocation/compute?window=1h"))
    assert oc is not None and oc.authorization() == "Basic b2M6cHc="  # oc:pw
    # the token source's URL lies under OpenCost's: its requests do not borrow the password
    gw = transport.route_for(httpx.URL("http://h:9003/prom/api/v1/query"))
    assert gw is not None and gw.transport is None and gw.authorization() is None
    assert transport.route_for(httpx.URL("https://h:9003/allocation/compute")) is None

    litellm["prometheus_url"] = "http://h:9003"
    with pytest.raises(ConfigError, match="use the same URL"):
        upstream_routes(
            settings_from_mapping(
                {**_config("http://h:9003", basic_auth=auth), "tokens": {"sources": [litellm]}}
            )
        )
