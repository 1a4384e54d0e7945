"""A process harness for end-to-end tests: real Prometheus and Alertmanager on 127.0.0.1.

The process code is shared with ``make stack`` and lives in :mod:`devtools.devstack`
(re-exported here, so tests import from one place):

- :class:`Processes` starts binaries with their logs in files and stops them by PID, newest
  first (``with Processes() as procs:``), so a test never leaves one behind.
- :func:`start_alertmanager` and :func:`start_prometheus` write the configuration into a
  temporary folder, bind to free loopback ports, pass ``--web.external-url`` (else the host
  name leaks into payloads) and wait for readiness by polling, never by sleeping: ``/-/ready``,
  then every scrape target healthy and every Alertmanager discovered.
  :func:`bundled_alertmanager` runs the repository's configuration against a local sink;
  :func:`start_demo_exporter` runs ``aifinops --demo`` and waits for ``/readyz``.
- :class:`ExpositionServer` serves a text exposition that a test changes at runtime.
- :class:`RecordingSink` records the JSON bodies POSTed to it (Slack webhook, PagerDuty
  Events API v2, generic webhook) for assertions.
- :func:`render_rule_files` renders the rule bundle with test-only threshold overrides.

Every wait has a timeout and reports the process log on failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from devtools.devstack import (
    ALERTMANAGER,
    EXPORTER_JOB,
    LOOPBACK,
    PROMETHEUS,
    Alertmanager,
    Exporter,
    Process,
    Processes,
    Prometheus,
    QuietHandler,
    Received,
    RecordingSink,
    bundled_alertmanager,
    free_port,
    http_get,
    http_json,
    serve_in_thread,
    start_alertmanager,
    start_demo_exporter,
    start_prometheus,
    wait_ready,
    wait_until,
)
from devtools.devstack import StackError as HarnessError

__all__ = [
    "ALERTMANAGER",
    "EXPORTER_JOB",
    "LOOPBACK",
    "PROMETHEUS",
    "Alertmanager",
    "Exporter",
    "ExpositionServer",
    "HarnessError",
    "Process",
    "Processes",
    "Prometheus",
    "Received",
    "RecordingSink",
    "bundled_alertmanager",
    "free_port",
    "http_get",
    "http_json",
    "render_rule_files",
    "start_alertmanager",
    "start_demo_exporter",
    "start_prometheus",
    "wait_ready",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]


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

        class Handler(QuietHandler):
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

        self._cm = serve_in_thread(Handler, self)
        self.url = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._cm is not None
        self._cm.__exit__(*exc)


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_rules", ROOT / "scripts" / "render_rules.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_rule_files(
    folder: Path, overrides: Mapping[str, Any], every_group_at_global_interval: bool = False
) -> list[Path]:
    """Render rules/src/ with ``overrides`` of thresholds.yaml into ``folder``; return the
    rule files. ``every_group_at_global_interval`` drops groups' own ``interval:`` (the 30-day
    group's 3m would delay its first evaluation by up to 3 minutes in a test)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in _renderer().render(overrides=dict(overrides)).items():
        if every_group_at_global_interval:
            doc = yaml.safe_load(text)
            for group in doc["groups"]:
                group.pop("interval", None)
            text = yaml.safe_dump(doc, sort_keys=False)
        path = folder / name
        path.write_text(text)
        paths.append(path)
    return paths
