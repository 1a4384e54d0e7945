"""Secrets stay hidden and credentials are checked safely (issue 14, items 4 and 9).

* Credentials written into upstream URLs (``user:pass@``, ``?api_key=``) never reach the
  log, ``/readyz``, ``/`` or a configuration error (the real CLI, its stderr read whole).
* ``/readyz`` keeps its 200/503 open for probes; its per-source detail needs the basic auth
  that guards ``/metrics``.
* An unknown basic-auth user costs a bcrypt of the same cost as a known one.
* A header with invalid UTF-8 is a 401, never a 500.
* The push rate limit cannot be bypassed by varying the ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from structlog.testing import capture_logs

from aifinops.settings import settings_from_mapping
from aifinops.status import REDACTED, redact_text, redact_url
from aifinops.web.app import REFRESHER, create_app
from aifinops.web.security import WEB_SECURITY, _dummy_hash
from tests.faults.rig import closed_port_url
from tests.lifecycle.proc import run_cli, start_exporter

PASSWORD = "hunter2-PASSWORD"
API_KEY = "sk-live-APIKEY"


def _secret_urls() -> tuple[str, str]:
    down = closed_port_url().removeprefix("http://")
    return (
        f"http://finops:{PASSWORD}@{down}/prom?api_key={API_KEY}&query=up",
        f"http://{down}/?access_token={API_KEY}&window=1h",
    )


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("https://u:p@host:9/x?window=1h", f"https://{REDACTED}@host:9/x?window=1h"),
        ("http://a:p@ss@h/", f"http://{REDACTED}@h/"),  # an unescaped @ in the password
        (
            "http://h/?api_key=k&x=1&X-Amz-Signature=s",
            f"http://h/?api_key={REDACTED}&x=1&X-Amz-Signature={REDACTED}",
        ),
        ("http://h/?token=t;password=p", f"http://h/?token={REDACTED};password={REDACTED}"),
        ("http://h:9090/api/v1/query?query=up", "http://h:9090/api/v1/query?query=up"),
    ],
)
def test_redact_url(url: str, want: str) -> None:
    assert redact_url(url) == want
    assert (
        redact_text(f"GET {url}: refused (URL('{url}'))") == f"GET {want}: refused (URL('{want}'))"
    )


def test_upstream_credentials_never_shown_by_the_running_exporter(tmp_path: Path) -> None:
    prom, opencost = _secret_urls()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "refresh": {"interval_seconds": 1},
                "sources": {
                    "dcgm": {"prometheus_url": prom, "timeout_seconds": 1},
                    "opencost": {"url": opencost, "timeout_seconds": 1},
                },
            }
        )
    )
    exporter = start_exporter(tmp_path, "--config", str(config))
    try:
        ready = exporter.wait_until("/readyz", 503)
        deadline = time.monotonic() + 20
        # until both sources have failed once (no sources at all before the first refresh)
        while len([s for s in ready.json()["sources"] if s["error"]]) < 2:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
            ready = exporter.get("/readyz")
        index = exporter.get("/").text
        metrics = exporter.get("/metrics").text
    finally:
        exporter.stop()
    stderr = exporter.stderr()
    assert '"event": "source_down"' in stderr  # the errors were logged, with their URLs
    assert REDACTED in ready.text and REDACTED in index and REDACTED in stderr
    for shown in (ready.text, index, metrics, stderr):
        assert PASSWORD not in shown and API_KEY not in shown

    # a configuration error shows the bad value, redacted
    config.write_text(yaml.safe_dump({"sources": {"opencost": {"url": opencost, "window": prom}}}))
    proc = run_cli("--config", str(config), "--check-config")
    assert proc.returncode == 2 and "sources.opencost.window" in proc.stderr
    assert PASSWORD not in proc.stderr and API_KEY not in proc.stderr


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _web_config(tmp_path: Path, cost: int = 4) -> Path:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=cost)).decode()
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    return path


async def test_readyz_detail_follows_the_metrics_auth(aiohttp_client: Any, tmp_path: Path) -> None:
    _, opencost = _secret_urls()
    settings = settings_from_mapping(
        {
            "server": {"web_config_file": str(_web_config(tmp_path))},
            "sources": {"opencost": {"url": opencost, "timeout_seconds": 1}},
        }
    )
    client = await aiohttp_client(create_app(settings, run_loop=False))
    await client.app[REFRESHER].refresh_once()
    for headers in ({}, _basic("prometheus", "wrong"), _basic("nobody", "pw")):
        resp = await client.get("/readyz", headers=headers)
        assert resp.status == 503  # the probe's answer, open to all
        assert await resp.json() == {"ready": False, "stalled": False}
    resp = await client.get("/readyz", headers=_basic("prometheus", "pw"))
    assert resp.status == 503
    body = await resp.json()
    (oc,) = [s for s in body["sources"] if s["source"] == "opencost"]
    assert REDACTED in oc["error"] and API_KEY not in oc["error"]


async def test_unknown_users_cost_a_bcrypt_of_the_known_users_cost(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    cost = 12  # the old fixed dummy hash had cost 10: a quarter of a known user's check
    client = await aiohttp_client(
        create_app(
            settings_from_mapping(
                {"server": {"web_config_file": str(_web_config(tmp_path, cost))}}
            ),
            run_loop=False,
        )
    )
    security = client.app[WEB_SECURITY]
    assert _dummy_hash(cost).startswith(f"$2b${cost}$".encode())
    await security.allowed(_basic("warm-up", "x")["Authorization"])  # a first call, untimed

    async def timed(user: str, password: str) -> float:
        started = time.perf_counter()
        assert not await security.allowed(_basic(user, password)["Authorization"])
        return time.perf_counter() - started

    # interleaved, the fastest of three each: the machine is shared
    known, unknown = [], []
    for i in range(3):
        known.append(await timed("prometheus", f"wrong{i}"))
        unknown.append(await timed(f"nobody{i}", "wrong"))
    # the old dummy (cost 10) made the ratio 0.25; wide bounds, as the machine is shared
    assert 0.45 < min(unknown) / min(known) < 2.2, (unknown, known)


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("path", "header"),
    [
        (b"/api/v1/summary", b"Bearer \xff\xfe\xfd"),
        (b"/api/v1/summary", b"Bear\xc3er abc"),
        (b"/metrics", b"Basic \xff\xfe"),
        (b"/metrics", b"B\xffsic Zm9vOmJhcg=="),
    ],
)
async def test_invalid_utf8_in_credentials_is_a_401(
    aiohttp_client: Any, tmp_path: Path, path: bytes, header: bytes
) -> None:
    token = tmp_path / "read-token"
    token.write_text("reader-token\n")
    settings = settings_from_mapping(
        {
            "server": {"web_config_file": str(_web_config(tmp_path))},
            "api": {"require_auth_for_reads": True, "read_token_files": [str(token)]},
        }
    )
    client = await aiohttp_client(create_app(settings, run_loop=False))
    with capture_logs() as logs:
        answer = await _raw(
            client.port,
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + header
            + b"\r\nConnection: close\r\n\r\n",
        )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


async def test_push_rate_limit_is_keyed_on_the_verified_identity(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    push_token = tmp_path / "push-token"
    push_token.write_text("pusher\n")
    record = {"records": [{"tenant": "search", "model": "gpt-4o", "input_tokens": 1}]}

    async def client_for(**push: Any) -> Any:
        limits = {"rate_limit_per_second": 0.001, "rate_limit_burst": 2}
        settings = settings_from_mapping({"tokens": {"push": {"enabled": True, **limits, **push}}})
        return await aiohttp_client(create_app(settings, run_loop=False))

    # an open endpoint: a made-up Authorization header per request must not buy a new bucket
    open_push = await client_for()
    statuses = [
        (await open_push.post("/api/v1/usage", json=record, headers=h)).status
        for h in ({}, {"Authorization": "Basic a"}, {"Authorization": "Basic b"}, {})
    ]
    assert statuses == [202, 202, 429, 429]
    # a protected one: the same token written differently is the same client
    guarded = await client_for(bearer_token_file=str(push_token))
    statuses = [
        (await guarded.post("/api/v1/usage", json=record, headers={"Authorization": h})).status
        for h in ("Bearer pusher", "bearer pusher", "Bearer   pusher ", "BEARER pusher")
    ]
    assert statuses == [202, 202, 429, 429]
    assert (await guarded.post("/api/v1/usage", json=record)).status == 401
