"""The Prometheus exporter-toolkit's command-line conventions, on the real CLI:
``--web.listen-address`` (repeatable), ``--web.config.file``, ``--web.telemetry-path``,
``--log.level``, ``--log.format`` (logfmt, json); flags over config over defaults; an address
in use is one log line and exit 1; ``process_*`` and ``aifinops_build_info{revision}``; every
log line, the standard library's and aiohttp's tracebacks included, one line in the format."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from aifinops.__main__ import (
    _with_overrides,
    listen_addresses,
    main,
    parse_args,
    parse_listen_address,
)
from aifinops.exposition.catalog import PROCESS
from aifinops.exposition.process import process_exposition
from aifinops.logs import configure_logging
from aifinops.settings import ConfigError, Settings, settings_from_mapping
from aifinops.version import REVISION_ENV, revision
from tests.lifecycle.proc import assert_clean_stderr, free_port

FLAGS = (
    "--web.listen-address",
    "--web.config.file",
    "--web.telemetry-path",
    "--log.level",
    "--log.format",
)
LOGFMT_LINE = re.compile(r'^timestamp=\S+ level=\w+ (logger=\S+ )?event=("[^"]*"|\S+)( |$)')


def test_help_lists_every_flag_and_its_config_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in out
    for field in ("server.telemetry_path", "server.web_config_file", "logging.format"):
        assert field in out
    assert "logfmt" in out and "json" in out


def test_readme_documents_every_flag_and_the_precedence() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for flag in FLAGS:
        assert f"`{flag} " in readme, flag
    assert "Precedence:" in readme


def settings(data: dict[str, Any]) -> Settings:
    return settings_from_mapping(data)


def test_flags_win_over_the_config_which_wins_over_defaults(tmp_path: Path) -> None:
    config = settings(
        {
            "server": {"port": 9100, "telemetry_path": "/cfg", "web_config_file": "/cfg.yml"},
            "logging": {"level": "warning", "format": "json"},
        }
    )
    # no flags: the config
    plain = _with_overrides(config, parse_args([]))
    assert listen_addresses(plain, parse_args([])) == [("0.0.0.0", 9100)]
    assert plain.server.telemetry_path == "/cfg" and plain.logging.level == "warning"
    # flags
    args = parse_args(
        [
            "--web.listen-address=127.0.0.1:9200",
            "--web.listen-address=[::1]:9201",
            "--web.listen-address=:9202",
            "--web.telemetry-path=/flag",
            f"--web.config.file={tmp_path / 'w.yml'}",
            "--log.level=debug",
            "--log.format=logfmt",
        ]
    )
    flagged = _with_overrides(config, args)
    assert listen_addresses(flagged, args) == [("127.0.0.1", 9200), ("::1", 9201), ("", 9202)]
    assert flagged.server.telemetry_path == "/flag"
    assert flagged.server.web_config_file == tmp_path / "w.yml"
    assert (flagged.logging.level, flagged.logging.format) == ("debug", "logfmt")
    # defaults
    default = _with_overrides(settings({}), parse_args([]))
    assert listen_addresses(default, parse_args([])) == [("0.0.0.0", 9877)]
    assert default.server.telemetry_path == "/metrics"


@pytest.mark.parametrize("bad", ["9877", "host:", "host:99999", "::1:9877", "a:b"])
def test_bad_listen_address_names_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"--web\.listen-address"):
        parse_listen_address(bad)


@pytest.mark.parametrize("path", ["metrics", "/healthz", "/api/v1/x", "/-/reload", "/a b"])
def test_telemetry_path_cannot_hide_a_route(path: str) -> None:
    with pytest.raises(ConfigError, match="telemetry_path"):
        _with_overrides(settings({}), argparse.Namespace(**{
            **vars(parse_args([])), "telemetry_path": path}))  # fmt: skip


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aifinops", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_an_address_in_use_is_one_log_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = free_port()
        proc = run_cli(
            "--demo",
            f"--web.listen-address=127.0.0.1:{free}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.format=logfmt",
        )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert LOGFMT_LINE.match(lines[0]), lines[0]
    assert "event=cannot_start" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "in use" in lines[0]
    assert_clean_stderr(proc.stderr.replace("level=error", ""))


def test_invalid_configuration_is_one_json_line_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {telemetry_path: /healthz}\nrefresh: {interval_seconds: -1}\n")
    proc = run_cli("--config", str(cfg), "--log.format=json")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    event = json.loads(line)
    assert event["event"] == "invalid_configuration"
    assert "server.telemetry_path" in event["error"]
    assert "refresh.interval_seconds" in event["error"]


@pytest.fixture
def exporter_on_two_ports(tmp_path: Path) -> Iterator[tuple[list[int], Path]]:
    ports = [free_port(), free_port()]
    err = tmp_path / "stderr"
    web_config = tmp_path / "web.yml"
    web_config.write_text(yaml.safe_dump({"http_server_config": {"headers": {
        "X-Frame-Options": "deny"}}}))  # fmt: skip
    with err.open("wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "aifinops", "--demo",
                *(f"--web.listen-address=127.0.0.1:{p}" for p in ports),
                "--web.telemetry-path=/custom-metrics",
                f"--web.config.file={web_config}",
                "--log.format=logfmt", "--log.level=info",
            ],
            stdout=subprocess.DEVNULL, stderr=f,
            env={**os.environ, REVISION_ENV: "0123abc"},
        )  # fmt: skip
    try:
        yield ports, err
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("never ready")


def test_serves_every_listen_address_at_the_telemetry_path(
    exporter_on_two_ports: tuple[list[int], Path],
) -> None:
    ports, err = exporter_on_two_ports
    for port in ports:
        wait_ready(port)
        page = httpx.get(f"http://127.0.0.1:{port}/custom-metrics", timeout=5)
        assert page.status_code == 200
        assert page.headers["X-Frame-Options"] == "deny"  # --web.config.file applied
        families = {f.name: f for f in text_string_to_metric_families(page.text)}
        # process_* as prometheus_client names them (its parser drops _total from counters)
        for spec in PROCESS:
            assert spec.name.removesuffix("_total") in families, spec.name
        (cpu,) = families["process_cpu_seconds"].samples
        assert cpu.value > 0
        (build,) = families["aifinops_build_info"].samples
        assert build.labels["revision"] == "0123abc"
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404
    # gzip: one member holding the prepared page and the process block (any reader sees both)
    with httpx.stream(
        "GET",
        f"http://127.0.0.1:{ports[0]}/custom-metrics",
        headers={"Accept-Encoding": "gzip"},
        timeout=5,
    ) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = b"".join(resp.iter_raw())
    member = zlib.decompressobj(zlib.MAX_WBITS | 16)
    body = member.decompress(raw).decode()
    assert member.eof and member.unused_data == b""
    assert "aifinops_build_info" in body and "\nprocess_max_fds " in body
    stderr = err.read_text()
    lines = stderr.strip().splitlines()
    assert lines and all(LOGFMT_LINE.match(line) for line in lines), stderr
    assert sum("event=listening" in line for line in lines) == 2


def test_gzip_with_a_tail_is_one_member() -> None:
    from aifinops.exposition.render import Exposition

    plain = b"".join(b'aifinops_x{i="%d"} 1\n' % i for i in range(5000))
    tail = process_exposition()
    exposition = Exposition.from_bytes(plain)
    assert gzip.decompress(exposition.gzipped) == plain
    body = exposition.gzipped_with(tail)
    member = zlib.decompressobj(zlib.MAX_WBITS | 16)  # one member: what httpx and curl read
    assert member.decompress(body) == plain + tail
    assert member.eof and member.unused_data == b""
    assert len(body) < len(exposition.gzipped) + len(tail)  # the page was not sent twice


def test_revision_from_the_environment_or_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    revision.cache_clear()
    monkeypatch.setenv(REVISION_ENV, "feedbeef")
    try:
        assert revision() == "feedbeef"
        revision.cache_clear()
        monkeypatch.delenv(REVISION_ENV)
        got = revision()
        # a git checkout gives its commit; a copy without .git says unknown
        assert got == "unknown" or re.fullmatch(r"[0-9a-f]{40,64}", got)
    finally:
        revision.cache_clear()


# --- logging -----------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook)
    # A test before this one may have left warnings captured (any configure_logging call, a
    # config reload's included): logging.captureWarnings(True) is then a no-op, and pytest's
    # per-test warning recorder would keep the warning from the log.
    logging.captureWarnings(False)
    try:
        yield
    finally:
        structlog.configure(**config)
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        logging.captureWarnings(False)
        sys.excepthook, threading.excepthook = hooks


def _boom() -> None:
    raise ValueError("boom\nsecond line")


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
async def test_aiohttp_tracebacks_and_stdlib_lines_are_one_line_each(
    fmt: str,
    aiohttp_client: Any,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    configure_logging("info", fmt)

    async def fail(request: web.Request) -> web.Response:
        _boom()
        return web.Response()

    app = web.Application()
    app.router.add_get("/fail", fail)
    client = await aiohttp_client(app)
    assert (await client.get("/fail")).status == 500  # aiohttp logs "Error handling request"
    logging.getLogger("some.library").warning("plain %s line", "stdlib")
    structlog.get_logger("aifinops").info("native", n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a warning", RuntimeWarning, stacklevel=1)
    lines = capsys.readouterr().err.strip().splitlines()
    if fmt == "json":
        events = [json.loads(line) for line in lines]  # every line is one JSON object
    else:
        assert all(LOGFMT_LINE.match(line) for line in lines), lines
        events = [{"line": line} for line in lines]
    text = "\n".join(lines)
    assert "Error handling request" in text and "ValueError: boom" in text
    assert "plain stdlib line" in text and "native" in text and "a warning" in text
    assert len(lines) == 4, lines
    if fmt == "json":
        (failed,) = [e for e in events if e["event"].startswith("Error handling request")]
        assert failed["logger"] == "aiohttp.server" and failed["level"] == "error"
        assert "Traceback" in failed["exception"] and "second line" in failed["exception"]


def test_main_rejects_an_unknown_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--log.format=console"])
    assert info.value.code == 2
    assert "--log.format" in capsys.readouterr().err


@pytest.mark.e2e
def test_prometheus_reads_the_whole_gzip_page(tmp_path: Path) -> None:
    """A real Prometheus (Go's gzip reader; it always asks for gzip) scrapes the demo
    exporter: the prepared series and the per-scrape process_* series both arrive."""
    from devtools.devstack import (
        EXPORTER_JOB,
        Processes,
        start_demo_exporter,
        start_prometheus,
        wait_until,
    )
    from tests.tools import require_binary

    binary = require_binary("prometheus")
    with Processes() as procs:
        exporter = start_demo_exporter(procs, tmp_path / "exporter")
        prom = start_prometheus(
            procs, tmp_path / "prom", {EXPORTER_JOB: [exporter.host_port]}, binary=binary
        )

        def scraped() -> bool:
            return bool(prom.query("process_cpu_seconds_total")) and bool(
                prom.query("aifinops_build_info")
            )

        wait_until(scraped, 20.0, "process_* and aifinops_build_info in Prometheus")
        (up,) = prom.query(f'up{{job="{EXPORTER_JOB}"}}')
        assert up["value"][1] == "1"
        (fds,) = prom.query("process_open_fds")
        assert float(fds["value"][1]) > 0


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_an_uncaught_exception_is_one_line(fmt: str) -> None:
    code = (
        "from aifinops.logs import configure_logging\n"
        f"configure_logging('info', '{fmt}')\n"
        "raise ValueError('first\\nsecond')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "uncaught_exception" in line and "Traceback" in line and "second" in line
    if fmt == "json":
        assert "ValueError: first\nsecond" in json.loads(line)["exception"]
    else:
        assert LOGFMT_LINE.match(line), line
