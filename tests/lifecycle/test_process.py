"""The real CLI in a child process: graceful SIGTERM, start-up with every upstream down,
config reload on SIGHUP that keeps the old configuration when the new one is bad."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import yaml

from tests.faults.rig import closed_port_url
from tests.lifecycle.proc import assert_clean_stderr, start_exporter
from tests.web.conftest import parse_page


def sample(text: str, name: str, **labels: str) -> float | None:
    for labels_, value in parse_page(text).get(name, []):
        if all(labels_.get(k) == v for k, v in labels.items()):
            return value
    return None


def test_sigterm_lets_an_in_flight_scrape_finish(tmp_path: Path) -> None:
    exporter = start_exporter(tmp_path, "--demo")
    try:
        exporter.wait_until("/readyz", 200)
        # A scraper that reads slowly: a small receive buffer keeps the answer in flight on
        # the exporter's side while SIGTERM arrives.
        with socket.create_connection(("127.0.0.1", exporter.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            first = sock.recv(512)
            assert first.startswith(b"HTTP/1.1 200")
            exporter.signal(signal.SIGTERM)
            chunks = [first]
            while True:
                time.sleep(0.001)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert len(body) == length, "the scrape in flight was cut off"
        assert body.endswith(b"\n")
        assert exporter.proc.wait(timeout=30) == 0
        stderr = exporter.stderr()
        assert_clean_stderr(stderr)
        assert '"event": "stopped"' in stderr
    finally:
        exporter.stop()


def test_all_upstreams_down_then_reload_on_sighup(tmp_path: Path) -> None:
    down = closed_port_url()
    config = tmp_path / "config.yaml"
    good = {
        "refresh": {"interval_seconds": 1},
        "sources": {
            "dcgm": {"prometheus_url": down, "timeout_seconds": 1},
            "opencost": {"url": down, "timeout_seconds": 1},
        },
        "tokens": {"push": {"enabled": True}},
        "tenancy": {"namespaces": {"team-a": "a"}},
    }
    config.write_text(yaml.safe_dump(good))
    exporter = start_exporter(tmp_path, "--config", str(config))
    try:
        # serves its own health and self-metrics, and says it is not ready
        assert exporter.wait_until("/healthz", 200).json() == {"status": "ok"}
        page = ""
        deadline = time.monotonic() + 30
        while sample(page, "aifinops_refreshes_total") is None and time.monotonic() < deadline:
            time.sleep(0.2)
            page = exporter.get("/metrics").text
        assert sample(page, "aifinops_source_up", source="opencost") == 0.0
        assert sample(page, "aifinops_source_errors_total", source="dcgm", reason="connect")
        assert sample(page, "aifinops_build_info") is not None
        assert sample(page, "aifinops_config_last_reload_successful") == 1.0
        ready = exporter.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False

        # a broken file: the reload fails, the old configuration stays
        config.write_text("sources: [this is not\n")
        exporter.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while sample(page, "aifinops_config_last_reload_successful") != 0.0:
            assert time.monotonic() < deadline, exporter.stderr()[-2000:]
            time.sleep(0.1)
            page = exporter.get("/metrics").text
        assert exporter.get("/healthz").status_code == 200
        assert '"event": "config_reload_failed"' in exporter.stderr()

        # a good one: applied
        before = sample(page, "aifinops_config_last_reload_success_timestamp_seconds")
        good["tenancy"] = {"namespaces": {"team-b": "b"}}
        config.write_text(yaml.safe_dump(good))
        exporter.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while sample(page, "aifinops_config_last_reload_successful") != 1.0:
            assert time.monotonic() < deadline, exporter.stderr()[-2000:]
            time.sleep(0.1)
            page = exporter.get("/metrics").text
        after = sample(page, "aifinops_config_last_reload_success_timestamp_seconds")
        assert before is not None and after is not None and after > before

        exporter.signal(signal.SIGTERM)
        assert exporter.proc.wait(timeout=30) == 0
        stderr = exporter.stderr()
        # the failed reload is logged at error level, on purpose; nothing else may be
        assert stderr.count('"level": "error"') == 1
        assert_clean_stderr(stderr.replace('"level": "error"', '"level": "warning"'))
    finally:
        exporter.stop()
