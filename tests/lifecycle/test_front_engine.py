"""The front and the refresh engine as real processes (``server.refresh_process: separate``,
the default): the front serves the page, the probes and the prepared API answers from what
the engine published, with no call to it; passes the rest on; enforces auth itself; restarts
an engine that dies; and stops it cleanly."""

from __future__ import annotations

import gzip
import json
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from tests.lifecycle.proc import Exporter, assert_clean_stderr, start_exporter
from tests.lifecycle.test_demo_process import alive, descendants
from tests.lifecycle.test_process import sample

READ_TOKEN = "read-token-for-tests-0123456789"
WRITE_TOKEN = "write-token-for-tests-0123456789"
USER, PASSWORD = "prometheus", "scrape-secret"


def events(exporter: Exporter, name: str) -> list[dict[str, Any]]:
    out = []
    for line in exporter.stderr().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == name:
            out.append(doc)
    return out


def engine_pid(exporter: Exporter) -> int:
    started = events(exporter, "refresh_engine_started")
    assert started, exporter.stderr()[-2000:]
    pid: int = started[-1]["pid"]
    return pid


def wait_for(check: Any, what: str, exporter: Exporter, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: {exporter.stderr()[-3000:]}"
        time.sleep(0.1)


def strip_process_lines(page: bytes) -> bytes:
    """The page less what each process appends at scrape time (``process_*``, and the
    front's view of the engine)."""

    def appended(line: bytes) -> bool:
        words = line.split(b" ")
        name = words[2] if line.startswith(b"#") and len(words) > 2 else line
        return name.startswith((b"process_", b"aifinops_refresh_engine_"))

    return b"\n".join(line for line in page.split(b"\n") if not appended(line))


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Exporter]:
    """The demo behind basic auth (the page) and bearer tokens (the API), pushes on, a state
    file, refreshing every second."""
    read = tmp_path / "read.token"
    read.write_text(READ_TOKEN)
    write = tmp_path / "write.token"
    write.write_text(WRITE_TOKEN)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yaml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "refresh": {"interval_seconds": 1},
                "server": {"web_config_file": str(web)},
                "api": {
                    "require_auth_for_reads": True,
                    "read_token_files": [str(read)],
                    "write_token_files": [str(write)],
                },
                "tokens": {
                    "push": {"enabled": True, "rate_limit_per_second": 0.001, "rate_limit_burst": 2}
                },
                "state": {"path": str(tmp_path / "state" / "state.json")},
            }
        )
    )
    exporter = start_exporter(tmp_path, "--demo", "--config", str(config))
    try:
        yield exporter
    finally:
        exporter.stop()


AUTH = httpx.BasicAuth(USER, PASSWORD)
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}


def ready(exporter: Exporter) -> bool:
    assert exporter.proc.poll() is None, exporter.stderr()[-3000:]
    try:
        return httpx.get(exporter.url + "/readyz", timeout=10).status_code == 200
    except httpx.TransportError:
        return False  # not listening yet


def test_front_answers_with_the_engine_stopped_and_enforces_auth(secured: Exporter) -> None:
    ex = secured
    wait_for(lambda: ready(ex), "ready", ex)
    # Auth is the front's: the page needs basic auth, the API a bearer token.
    assert httpx.get(ex.url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(ex.url + "/metrics", auth=AUTH, timeout=10).status_code == 200
    denied = httpx.get(ex.url + "/api/v1/summary", timeout=10)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert (
        httpx.get(
            ex.url + "/api/v1/summary", headers={"Authorization": "Bearer nope"}, timeout=10
        ).status_code
        == 401
    )
    # The first ask is passed to the engine, which then prepares the answer with each refresh.
    first = wait_for(
        lambda: (
            (r := httpx.get(ex.url + "/api/v1/summary", headers=READ, timeout=10)).status_code
            == 200
            and r
        ),
        "summary",
        ex,
    )
    assert first.json()["currency"] == "USD"

    def counted() -> float:
        page = httpx.get(ex.url + "/metrics", auth=AUTH, timeout=10).text
        return sample(page, "aifinops_refreshes_total") or 0.0

    seen = counted()
    wait_for(lambda: counted() >= seen + 2, "two refreshes", ex)

    pid = engine_pid(ex)
    os.kill(pid, signal.SIGSTOP)
    try:
        # Short timeouts: a request that reached the stopped engine would hang.
        page = httpx.get(
            ex.url + "/metrics", auth=AUTH, headers={"Accept-Encoding": "gzip"}, timeout=3
        )
        assert page.status_code == 200
        assert page.headers["Content-Encoding"] == "gzip"
        assert sample(page.text, "aifinops_build_info") is not None
        assert sample(page.text, "aifinops_refresh_engine_up") == 1.0
        assert sample(page.text, "process_resident_memory_bytes") is not None
        plain = httpx.get(
            ex.url + "/metrics", auth=AUTH, headers={"Accept-Encoding": "identity"}, timeout=3
        )
        assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
        assert httpx.get(ex.url + "/readyz", timeout=3).status_code == 200
        assert httpx.get(ex.url + "/healthz", timeout=3).json() == {"status": "ok"}
        assert httpx.get(ex.url + "/", auth=AUTH, timeout=3).status_code == 200
        summary = httpx.get(ex.url + "/api/v1/summary", headers=READ, timeout=3)
        assert summary.status_code == 200 and summary.json()["currency"] == "USD"
        # the prepared answer is still guarded
        assert httpx.get(ex.url + "/api/v1/summary", timeout=3).status_code == 401
    finally:
        os.kill(pid, signal.SIGCONT)

    # Passed on: a route that is never prepared, a what-if POST, pushes (auth and the
    # per-client limit the engine's, with this client's address, not the front's).
    doc = httpx.get(ex.url + "/api/v1/openapi.json", timeout=10)
    assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.")
    recs = httpx.get(ex.url + "/api/v1/recommendations?min_saving_usd=1", headers=READ, timeout=10)
    assert recs.status_code == 200
    bad = httpx.get(ex.url + "/api/v1/recommendations?nope=1", headers=READ, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "nope"
    batch = {"records": [{"tenant": "search", "model": "gpt-4o", "input_tokens": 5}]}
    assert httpx.post(ex.url + "/api/v1/usage", json=batch, timeout=10).status_code == 401
    assert (
        httpx.post(ex.url + "/api/v1/usage", json=batch, headers=READ, timeout=10).status_code
        == 403
    )
    gz = gzip.compress(json.dumps(batch).encode())
    pushed = httpx.post(
        ex.url + "/api/v1/usage",
        content=gz,
        headers={**WRITE, "Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=10,
    )
    assert pushed.status_code == 202 and pushed.json() == {"accepted": 1, "duplicates": 0}
    assert (
        httpx.post(ex.url + "/api/v1/usage", json=batch, headers=WRITE, timeout=10).status_code
        == 202
    )
    limited = httpx.post(ex.url + "/api/v1/usage", json=batch, headers=WRITE, timeout=10)
    assert limited.status_code == 429 and limited.headers["Retry-After"]
    # SIGTERM: the front passes it on; the engine writes the state file on its way out
    # (saved once at its first refresh, due again only after a minute: this is the last).
    state = Path(ex.stderr_path).parent / "state" / "state.json"
    time.sleep(0.05)
    asked_to_stop = time.time()
    ex.signal(signal.SIGTERM)
    assert ex.proc.wait(timeout=30) == 0
    assert not alive(pid)
    assert state.stat().st_mtime >= asked_to_stop
    assert_clean_stderr(ex.stderr())


def test_a_killed_engine_is_restarted_and_the_last_page_kept(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"refresh": {"interval_seconds": 3600}}))
    ex = start_exporter(tmp_path, "--demo", "--config", str(config))
    try:
        wait_for(lambda: ready(ex), "ready", ex)
        wait_for(
            lambda: sample(ex.get("/metrics").text, "aifinops_month_to_date_ready") == 1.0,
            "month",
            ex,
        )
        before = ex.get("/metrics").text
        first = engine_pid(ex)
        family = descendants(ex.proc.pid)
        old_fakes = [p for p, cmd in family.items() if "aifinops.demo.child" in cmd]
        assert len(old_fakes) == 1, family
        os.kill(first, signal.SIGKILL)
        # The last page is served meanwhile, and says the engine is down.
        down = wait_for(
            lambda: (
                (p := ex.get("/metrics").text)
                and sample(p, "aifinops_refresh_engine_up") == 0.0
                and p
            ),
            "engine down",
            ex,
        )
        assert sample(down, "aifinops_refreshes_total") == sample(
            before, "aifinops_refreshes_total"
        )
        assert sample(down, "aifinops_tenant_cost_usd_per_hour", tenant="search") is not None
        assert sample(down, "aifinops_refresh_engine_resident_memory_bytes") is None
        # restarted, counted; ready again once the new engine has refreshed
        wait_for(lambda: len(events(ex, "refresh_engine_started")) == 2, "restart", ex)
        assert engine_pid(ex) != first
        wait_for(lambda: ready(ex), "ready again", ex)
        page = ex.get("/metrics").text
        assert sample(page, "aifinops_refresh_engine_restarts_total") == 1.0
        assert sample(page, "aifinops_refresh_engine_up") == 1.0
        assert (sample(page, "aifinops_refresh_engine_resident_memory_bytes") or 0) > 1e6
        assert len(events(ex, "refresh_engine_exited")) == 1
        # the fakes of the killed engine went with it (their stdin closed)
        wait_for(lambda: not alive(old_fakes[0]), "the old fakes gone", ex)
        ex.signal(signal.SIGTERM)
        assert ex.proc.wait(timeout=30) == 0
    finally:
        ex.stop()


def test_the_front_serves_the_engines_page(tmp_path: Path) -> None:
    """The same bytes as the engine's own /metrics on its unix socket, less what each
    process appends; the engine's socket is in a private folder, removed at exit."""
    config = tmp_path / "config.yaml"
    push = {"enabled": True, "rate_limit_per_second": 0.001, "rate_limit_burst": 1}
    config.write_text(
        yaml.safe_dump({"refresh": {"interval_seconds": 3600}, "tokens": {"push": push}})
    )
    ex = start_exporter(tmp_path, "--demo", "--config", str(config))
    try:
        wait_for(lambda: ready(ex), "ready", ex)
        wait_for(
            lambda: sample(ex.get("/metrics").text, "aifinops_month_to_date_ready") == 1.0,
            "month",
            ex,
        )
        # Pushes without a token are limited per client address: the engine sees each
        # client's, not the front's, and a client cannot name another one.
        batch = {"records": [{"tenant": "search", "model": "gpt-4o", "input_tokens": 5}]}
        url = ex.url + "/api/v1/usage"
        assert httpx.post(url, json=batch, timeout=10).status_code == 202
        assert httpx.post(url, json=batch, timeout=10).status_code == 429
        spoof = {"X-AIFinOps-Front-Client": "10.9.9.9"}
        assert httpx.post(url, json=batch, headers=spoof, timeout=10).status_code == 429
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            assert other.post(url, json=batch, timeout=10).status_code == 202
        (serving,) = events(ex, "refresh_engine_serving")
        path = Path(serving["socket"])
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        engine = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10)
        with engine:
            for _ in range(20):
                own = engine.get("http://engine/metrics").content
                front = ex.get("/metrics").content
                again = engine.get("http://engine/metrics").content
                if strip_process_lines(own) == strip_process_lines(again):
                    break
                time.sleep(0.2)
        assert strip_process_lines(front) == strip_process_lines(own)
        assert b"aifinops_refresh_engine_up 1" in front
        assert b"aifinops_refresh_engine_up" not in own
        ex.signal(signal.SIGTERM)
        assert ex.proc.wait(timeout=30) == 0
        assert not path.parent.exists()
        assert_clean_stderr(ex.stderr())
    finally:
        ex.stop()


def test_inline_mode_serves_from_one_process(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"server": {"refresh_process": "inline"}}))
    ex = start_exporter(tmp_path, "--demo", "--config", str(config))
    try:
        wait_for(lambda: ready(ex), "ready", ex)
        page = ex.get("/metrics").text
        assert sample(page, "aifinops_build_info") is not None
        assert sample(page, "aifinops_refresh_engine_up") is None
        assert not events(ex, "refresh_engine_started")
        ex.signal(signal.SIGTERM)
        assert ex.proc.wait(timeout=30) == 0
    finally:
        ex.stop()


def test_tls_is_the_fronts_and_sighup_reaches_the_engine(tmp_path: Path) -> None:
    """HTTPS on the listen socket (the engine's socket is plain HTTP, private); a reload
    on SIGHUP is the engine's, and shows on the front's page."""
    from tests.faults.rig import closed_port_url
    from tests.security.test_web_security import make_cert

    cert, key = make_cert(tmp_path, "front")
    web = tmp_path / "web.yaml"
    web.write_text(
        yaml.safe_dump({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}})
    )
    down = closed_port_url()
    config = tmp_path / "config.yaml"
    good = {
        "refresh": {"interval_seconds": 1},
        "server": {"web_config_file": str(web)},
        "sources": {"opencost": {"url": down, "timeout_seconds": 1}},
    }
    config.write_text(yaml.safe_dump(good))
    ex = start_exporter(tmp_path, "--config", str(config))
    url = f"https://127.0.0.1:{ex.port}"

    def page() -> str:
        return httpx.get(
            url + "/metrics", verify=ssl.create_default_context(cafile=str(cert)), timeout=10
        ).text

    try:
        wait_for(lambda: _answers(url + "/healthz", cert), "https", ex)
        with pytest.raises(httpx.TransportError):
            httpx.get(ex.url + "/healthz", timeout=5)
        wait_for(lambda: sample(page(), "aifinops_refreshes_total"), "a refresh", ex)
        before = sample(page(), "aifinops_config_last_reload_success_timestamp_seconds")
        good["tenancy"] = {"namespaces": {"team-b": "b"}}
        config.write_text(yaml.safe_dump(good))
        ex.signal(signal.SIGHUP)
        wait_for(
            lambda: (
                (sample(page(), "aifinops_config_last_reload_success_timestamp_seconds") or 0)
                > (before or 0)
            ),
            "reloaded",
            ex,
        )
        assert events(ex, "config_reloaded")
        assert all(e.get("process") == "engine" for e in events(ex, "config_reloaded"))
        ex.signal(signal.SIGTERM)
        assert ex.proc.wait(timeout=30) == 0
    finally:
        ex.stop()


def _answers(url: str, cert: Path) -> bool:
    try:
        return (
            httpx.get(
                url, verify=ssl.create_default_context(cafile=str(cert)), timeout=5
            ).status_code
            == 200
        )
    except httpx.TransportError:
        return False
