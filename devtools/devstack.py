"""A local monitoring stack for development and end-to-end tests: the demo exporter, a real
Prometheus and a real Alertmanager on 127.0.0.1.

``scripts/stack.py`` (``make stack``) and the e2e harness (``tests/e2e/harness.py``) share it:

- :class:`Processes` starts binaries with their logs in files and stops them by PID, newest
  first (``with Processes() as procs:``), so nothing is left behind.
- :func:`start_demo_exporter`, :func:`start_alertmanager` and :func:`start_prometheus` bind to
  free (or given) loopback ports, pass ``--web.external-url`` (else the host name leaks into
  payloads) and wait for readiness by polling, never by sleeping: ``/readyz`` or
  ``/-/ready``, then every scrape target healthy and every Alertmanager discovered.
- :func:`bundled_alertmanager` starts Alertmanager with the repository's
  ``alertmanager/alertmanager.yml``, its secrets and PagerDuty URL pointed at a local sink.
- :class:`RecordingSink` records the JSON bodies POSTed to it (Slack webhook, PagerDuty
  Events API v2, generic webhook).

Only the standard library and PyYAML; every wait has a timeout and reports the process log on
failure. Nothing here is used by the exporter itself, so it lives outside the installed
package (``exporter/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
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
EXPORTER_JOB = "aifinops-exporter"  # matches the bundle's exporter_job_regex

T = TypeVar("T")


class StackError(AssertionError):
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
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
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
            raise StackError(
                f"{self.name} exited with status {self.popen.returncode}\n{self.log_tail()}"
            )


@dataclass
class Processes:
    """Started processes, stopped newest first on exit (SIGTERM, then SIGKILL)."""

    stop_timeout: float = 10.0
    started: list[Process] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start ``argv`` in ``cwd`` (its own session, so a terminal's Ctrl-C reaches only the
        parent, which stops the children in order); output goes to ``cwd/<name>.log``."""
        log = cwd / f"{name}.log"
        handle = log.open("wb")
        try:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else dict(env),
            )
        finally:
            handle.close()
        process = Process(name, popen, log)
        self.started.append(process)
        return process

    def stop(self, process: Process) -> None:
        """Stop one process (SIGTERM, then SIGKILL after ``stop_timeout``) and forget it."""
        with contextlib.suppress(ValueError):
            self.started.remove(process)
        if process.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.popen.pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=self.stop_timeout)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started[-1])

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


# --- the demo exporter -------------------------------------------------------------------------


@dataclass
class Exporter:
    url: str
    process: Process

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")


def start_demo_exporter(
    procs: Processes,
    workdir: Path,
    port: int | None = None,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "exporter",
    timeout: float = 30.0,
    wait: bool = True,
    args: Sequence[str] = (),
) -> Exporter:
    """Start ``python -m aifinops --demo`` on ``port`` (a free one by default), with
    ``--config config`` when given, then ``args`` (e.g. ``--demo-gpus 64``), and ``env``
    added to this process's environment (e.g. ``AIFINOPS__…`` overrides); wait for
    ``/readyz`` (the first refresh is done) unless ``wait=False`` (then call
    :func:`wait_ready`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [sys.executable, "-m", "aifinops", "--demo", "--port", str(port)]
    if config is not None:
        argv += ["--config", str(config)]
    argv += args
    process = procs.start(name, argv, cwd=workdir, env={**os.environ, **(env or {})})
    exporter = Exporter(f"http://{LOOPBACK}:{port}", process)
    if wait:
        wait_ready(exporter, timeout)
    return exporter


def wait_ready(exporter: Exporter, timeout: float = 30.0) -> None:
    def ready() -> bool:
        exporter.process.check_alive()
        http_get(f"{exporter.url}/readyz")
        return True

    wait_until(
        ready, timeout, f"{exporter.process.name} /readyz", on_timeout=exporter.process.log_tail
    )


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
    port: int | None = None,
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
    return run_alertmanager(procs, workdir, config_file, timeout, binary, port)


def run_alertmanager(
    procs: Processes,
    workdir: Path,
    config_file: Path,
    timeout: float = 20.0,
    binary: str = ALERTMANAGER,
    port: int | None = None,
) -> Alertmanager:
    """Start Alertmanager on an existing ``config_file`` (a layout of the caller's, e.g. the
    prometheus-operator's mounts), its data in ``workdir/data``; wait until it is ready."""
    port = port or free_port()
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


def bundled_alertmanager(
    procs: Processes,
    workdir: Path,
    alertmanager_dir: Path,
    sink_url: str,
    route_timings: Mapping[str, str] | None = None,
    binary: str = ALERTMANAGER,
    port: int | None = None,
) -> Alertmanager:
    """Alertmanager with ``alertmanager_dir/alertmanager.yml`` and its templates, unchanged
    except for local values: the secret files (Slack webhook ``<sink_url>/slack``, PagerDuty
    routing key ``e2e-routing-key``), the PagerDuty endpoint ``<sink_url>/pagerduty``, and
    ``route_timings`` (e.g. ``group_wait: 1s``) when given."""
    config: dict[str, Any] = yaml.safe_load((alertmanager_dir / "alertmanager.yml").read_text())
    config["global"]["pagerduty_url"] = f"{sink_url}/pagerduty"
    config["route"].update(route_timings or {})
    files: dict[str, str | bytes] = {
        "secrets/slack_api_url": f"{sink_url}/slack",
        "secrets/pagerduty_routing_key": "e2e-routing-key",
    }
    for template in (alertmanager_dir / "templates").glob("*.tmpl"):
        files[f"templates/{template.name}"] = template.read_bytes()
    return start_alertmanager(procs, workdir, config, files, binary=binary, port=port)


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
    port: int | None = None,
) -> Prometheus:
    """Start Prometheus scraping ``scrape_targets`` (job → ``host:port`` list) every
    ``interval``, evaluating ``rule_files`` and alerting ``alertmanagers``.

    ``agent=True`` starts agent mode (no rules, no alerting, no query API; it remote-writes to
    ``remote_write_urls``); ``remote_write_receiver=True`` accepts remote write at
    ``/api/v1/write`` (a central Prometheus). The TSDB is ``workdir/<name>-data`` (blocks put
    there beforehand are loaded: backfill). Returns once ready, every target is up and
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
    port = port or free_port()
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
def serve_in_thread(handler: type[BaseHTTPRequestHandler], owner: Any) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port from a daemon thread; yields the base URL.
    The handler reaches ``owner`` as ``self.server.owner``."""
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


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not log each request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Received:
    path: str
    body: Any
    at: float


class RecordingSink:
    """Records every POST (JSON body) by path, e.g. ``/slack`` and ``/pagerduty``; answers
    200 (PagerDuty clients expect 202, Alertmanager accepts any 2xx). ``on_receive`` is
    called with each record as it arrives (``make stack`` prints them)."""

    def __init__(self, on_receive: Callable[[Received], None] | None = None) -> None:
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._on_receive = on_receive
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

    def _record(self, record: Received) -> None:
        with self._lock:
            self._received.append(record)
        if self._on_receive is not None:
            self._on_receive(record)

    def __enter__(self) -> RecordingSink:
        owner = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode(errors="replace")
                owner._record(Received(self.path, body, time.time()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self._cm = serve_in_thread(Handler, self)
        self.url = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._cm is not None
        self._cm.__exit__(*exc)
