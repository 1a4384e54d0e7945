"""A process harness for end-to-end tests: real Prometheus and Alertmanager on 127.0.0.1.

- :class:`Processes` starts binaries with their logs in files and stops them by PID, newest
  first (``with Processes() as procs:``), so a test never leaves one behind.
- :func:`start_alertmanager` and :func:`start_prometheus` write the configuration into a
  temporary folder, bind to free loopback ports, pass ``--web.external-url`` (else the host
  name leaks into payloads) and wait for readiness by polling, never by sleeping: ``/-/ready``,
  then every scrape target healthy and every Alertmanager discovered.
- :class:`ExpositionServer` serves a text exposition that a test changes at runtime.
- :class:`RecordingSink` records the JSON bodies POSTed to it (Slack webhook, PagerDuty
  Events API v2, generic webhook) for assertions.

Only the standard library; every wait has a timeout and reports the process log on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class HarnessError(AssertionError):
    """A wait timed out or a process died; the message carries the relevant log tail."""


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy; return it. Exceptions from the probe
    count as "not yet"; the last one is reported if the timeout passes."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> bytes:
    """The body of a 2xx answer; an HTTPError (e.g. 503 while starting) is closed and raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        exc.close()  # else its socket leaks (a ResourceWarning, an error under pytest here)
        raise


def http_json(url: str, timeout: float = 2.0) -> Any:
    return json.loads(http_get(url, timeout))


# --- processes -------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"[{self.name}: no log]"
        return f"--- {self.name} log (last {len(text)} lines) ---\n" + "\n".join(text)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise HarnessError(
                f"{self.name} exited with status {self.popen.returncode}\n{self.log_tail()}"
            )


@dataclass
class Processes:
    """Started processes, stopped newest first on exit (SIGTERM, then SIGKILL)."""

    stop_timeout: float = 10.0
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], cwd: Path) -> Process:
        log = cwd / f"{name}.log"
        handle = log.open("wb")
        try:
            popen = subprocess.Popen(
                list(argv), cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            handle.close()
        process = Process(name, popen, log)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        while self.started:
            process = self.started.pop()
            if process.popen.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.popen.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=self.stop_timeout)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


# --- Alertmanager ----------------------------------------------------------------------------


@dataclass
class Alertmanager:
    url: str
    process: Process

    def alerts(self, **filters: str | bool) -> list[dict[str, Any]]:
        """``/api/v2/alerts`` with filters such as ``active=True, inhibited=True``."""
        query = urllib.parse.urlencode(
            {k: str(v).lower() if isinstance(v, bool) else v for k, v in filters.items()}
        )
        result: list[dict[str, Any]] = http_json(f"{self.url}/api/v2/alerts?{query}")
        return result

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")


def start_alertmanager(
    procs: Processes,
    workdir: Path,
    config: Mapping[str, Any],
    files: Mapping[str, str | bytes] | None = None,
    timeout: float = 20.0,
    binary: str = ALERTMANAGER,
) -> Alertmanager:
    """Start Alertmanager with ``config`` written to ``workdir/alertmanager.yml``.

    ``files`` are written under ``workdir`` first (templates, secret files); relative paths in
    the configuration resolve against ``workdir``. Gossip is off (``--cluster.listen-address=``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for rel, content in (files or {}).items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    config_file = workdir / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    process = procs.start(
        "alertmanager",
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--web.external-url={url}",
            "--cluster.listen-address=",
            "--log.level=info",
        ],
        cwd=workdir,
    )
    am = Alertmanager(url, process)

    def ready() -> bool:
        process.check_alive()
        return http_get(f"{url}/-/ready").strip() == b"OK"

    wait_until(ready, timeout, "Alertmanager /-/ready", on_timeout=process.log_tail)
    return am


# --- Prometheus ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: Process

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = http_json(f"{self.url}/api/v1/{path}{query}")
        if body.get("status") != "success":
            raise ValueError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector result of ``expr``."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alert_rules(self) -> list[dict[str, Any]]:
        """Every alerting rule with its ``state``, ``alerts`` and ``lastEvaluation``."""
        return [
            rule for group in self.api("rules", type="alert")["groups"] for rule in group["rules"]
        ]


def start_prometheus(
    procs: Processes,
    workdir: Path,
    scrape_targets: Mapping[str, Sequence[str]] | None = None,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[Alertmanager] = (),
    alert_relabel_configs: Sequence[Mapping[str, Any]] = (),
    external_labels: Mapping[str, str] | None = None,
    interval: str = "1s",
    agent: bool = False,
    remote_write_urls: Sequence[str] = (),
    remote_write_receiver: bool = False,
    name: str = "prometheus",
    timeout: float = 30.0,
    binary: str = PROMETHEUS,
) -> Prometheus:
    """Start Prometheus scraping ``scrape_targets`` (job → ``host:port`` list) every
    ``interval``, evaluating ``rule_files`` and alerting ``alertmanagers``.

    ``agent=True`` starts agent mode (no rules, no alerting, no query API; it remote-writes to
    ``remote_write_urls``); ``remote_write_receiver=True`` accepts remote write at
    ``/api/v1/write`` (a central Prometheus). Returns once ready, every target is up and
    every Alertmanager is discovered.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    global_cfg: dict[str, Any] = {"scrape_interval": interval, "scrape_timeout": interval}
    if not agent:
        global_cfg["evaluation_interval"] = interval
    if external_labels:
        global_cfg["external_labels"] = dict(external_labels)
    cfg: dict[str, Any] = {"global": global_cfg}
    if rule_files and not agent:
        cfg["rule_files"] = [str(p) for p in rule_files]
    if alertmanagers and not agent:
        cfg["alerting"] = {
            "alertmanagers": [
                {"static_configs": [{"targets": [a.host_port for a in alertmanagers]}]}
            ]
        }
        if alert_relabel_configs:
            cfg["alerting"]["alert_relabel_configs"] = [dict(c) for c in alert_relabel_configs]
    cfg["scrape_configs"] = [
        {"job_name": job, "static_configs": [{"targets": list(targets)}]}
        for job, targets in (scrape_targets or {}).items()
    ]
    if remote_write_urls:
        # Send within a second instead of the default 5s batch deadline.
        cfg["remote_write"] = [
            {"url": u, "queue_config": {"batch_send_deadline": "1s"}} for u in remote_write_urls
        ]
    config_file = workdir / f"{name}.yml"
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--web.listen-address={LOOPBACK}:{port}",
        f"--web.external-url={url}",
        "--storage.remote.flush-deadline=5s",
        "--log.level=info",
    ]
    if agent:
        argv += ["--enable-feature=agent", f"--storage.agent.path={workdir / (name + '-wal')}"]
    else:
        argv += [
            f"--storage.tsdb.path={workdir / (name + '-data')}",
            "--rules.alert.resend-delay=1s",
        ]
    if remote_write_receiver:
        argv.append("--web.enable-remote-write-receiver")
    process = procs.start(name, argv, cwd=workdir)
    prom = Prometheus(url, process)

    def ready() -> bool:
        process.check_alive()
        return http_get(f"{url}/-/ready").startswith(b"Prometheus")

    wait_until(ready, timeout, f"{name} /-/ready", on_timeout=process.log_tail)
    expected_targets = sum(len(t) for t in (scrape_targets or {}).values())
    if expected_targets and not agent:

        def targets_up() -> bool:
            process.check_alive()
            active = prom.api("targets", state="active")["activeTargets"]
            return len(active) == expected_targets and all(t["health"] == "up" for t in active)

        wait_until(
            targets_up, timeout, f"{name}: every scrape target up", on_timeout=process.log_tail
        )
    if alertmanagers and not agent:

        def alertmanagers_found() -> bool:
            return len(prom.api("alertmanagers")["activeAlertmanagers"]) == len(alertmanagers)

        wait_until(alertmanagers_found, timeout, f"{name}: Alertmanagers discovered")
    return prom


# --- HTTP helpers served from threads ----------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler], owner: Any) -> Iterator[str]:
    server = _Server((LOOPBACK, 0), handler)
    server.owner = owner  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name=type(owner).__name__, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ExpositionServer:
    """Serves ``/metrics`` with a Prometheus text exposition set by :meth:`set`.

    ``with ExpositionServer(text) as server:``; ``server.host_port`` is the scrape target.
    """

    def __init__(self, text: str = "") -> None:
        self._text = text
        self._lock = threading.Lock()
        self.url = ""
        self._cm: contextlib.AbstractContextManager[str] | None = None

    def set(self, text: str) -> None:
        with self._lock:
            self._text = text

    def get(self) -> str:
        with self._lock:
            return self._text

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")

    def __enter__(self) -> ExpositionServer:
        owner = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = owner.get().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._cm = _serve(Handler, self)
        self.url = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._cm is not None
        self._cm.__exit__(*exc)


@dataclass(frozen=True)
class Received:
    path: str
    body: Any
    at: float


class RecordingSink:
    """Records every POST (JSON body) by path, e.g. ``/slack`` and ``/pagerduty``; answers
    200 (PagerDuty clients expect 202, Alertmanager accepts any 2xx)."""

    def __init__(self) -> None:
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self.url = ""
        self._cm: contextlib.AbstractContextManager[str] | None = None

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def wait_for(
        self, path: str, predicate: Callable[[Any], bool], timeout: float, what: str
    ) -> Received:
        """The first body POSTed to ``path`` for which ``predicate`` holds."""

        def probe() -> Received | None:
            return next((r for r in self.received(path) if predicate(r.body)), None)

        def dump() -> str:
            return "received so far:\n" + "\n".join(
                f"{r.path}: {json.dumps(r.body)[:2000]}" for r in self.received()
            )

        return wait_until(probe, timeout, what, on_timeout=dump)

    def __enter__(self) -> RecordingSink:
        owner = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode(errors="replace")
                with owner._lock:
                    owner._received.append(Received(self.path, body, time.time()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self._cm = _serve(Handler, self)
        self.url = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._cm is not None
        self._cm.__exit__(*exc)
