#!/usr/bin/env python3
"""``make stack``: the demo exporter, a real Prometheus with the rule bundle and a real
Alertmanager with alertmanager/alertmanager.yml, all on 127.0.0.1, for a first look.

Slack and PagerDuty notifications go to a local sink that prints them here. Ctrl-C (or
SIGTERM) stops every process, newest first, and removes the temporary folder.

Usage: ``python scripts/stack.py [--exporter-port 9877] [--prometheus-port 9090]
[--alertmanager-port 9093] [--config FILE]``; a port already in use is replaced by a free one.
Needs ``prometheus`` and ``prometheus-alertmanager`` (``make tools``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# devtools/ (beside exporter/, not installed) is imported from the repository root.
sys.path.insert(0, str(ROOT))
from devtools.devstack import (  # noqa: E402
    ALERTMANAGER,
    EXPORTER_JOB,
    LOOPBACK,
    PROMETHEUS,
    Processes,
    Received,
    RecordingSink,
    StackError,
    bundled_alertmanager,
    free_port,
    start_demo_exporter,
    start_prometheus,
)

SCRAPE_INTERVAL = "5s"
# Notifications within seconds instead of the bundle's 30s / 5m, so a newcomer sees them.
ROUTE_TIMINGS = {"group_wait": "10s", "group_interval": "1m", "repeat_interval": "4h"}


def port_or_free(preferred: int) -> int:
    """``preferred`` if it is free on the loopback interface, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a recently closed connection (TIME_WAIT) does not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, preferred))
        except OSError:
            return free_port()
    return preferred


def print_notification(record: Received) -> None:
    body: Any = record.body
    if record.path == "/slack" and isinstance(body, dict):
        attachment = (body.get("attachments") or [{}])[0]
        head = f"[slack {body.get('channel')}] {attachment.get('title')}"
        text = str(attachment.get("text", ""))
    elif record.path == "/pagerduty" and isinstance(body, dict):
        payload = body.get("payload") or {}
        head = f"[pagerduty {body.get('event_action')}] {payload.get('summary', '')}"
        text = str((payload.get("custom_details") or {}).get("firing", ""))
    else:
        head, text = f"[{record.path}]", str(body)
    print(head + ("\n" + textwrap.indent(text.rstrip(), "    ") if text.strip() else ""))
    sys.stdout.flush()


class StopSignal:
    """SIGINT / SIGTERM handler: during start-up it interrupts (KeyboardInterrupt, so the
    ``with`` blocks stop what was started); once the stack runs it asks the wait loop to end."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.running = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.running:
            raise KeyboardInterrupt
        self.requested.set()


def run(args: argparse.Namespace, workdir: Path, stop: StopSignal) -> int:
    """Start everything, print the URLs, wait for ``stop``; the ``with`` blocks stop the
    processes (newest first) and the sink however this returns."""
    with Processes() as procs, RecordingSink(on_receive=print_notification) as sink:
        am = bundled_alertmanager(
            procs,
            workdir / "alertmanager",
            ROOT / "alertmanager",
            sink.url,
            route_timings=ROUTE_TIMINGS,
            port=port_or_free(args.alertmanager_port),
        )
        exporter = start_demo_exporter(
            procs,
            workdir / "exporter",
            port=port_or_free(args.exporter_port),
            config=args.config,
        )
        prometheus = start_prometheus(
            procs,
            workdir / "prometheus",
            scrape_targets={EXPORTER_JOB: [exporter.host_port]},
            rule_files=sorted((ROOT / "rules").glob("*.rules.yaml")),
            alertmanagers=[am],
            interval=SCRAPE_INTERVAL,
            port=port_or_free(args.prometheus_port),
        )
        print(
            f"""
AI FinOps stack on {LOOPBACK} (Ctrl-C stops it and removes {workdir}):
  exporter      {exporter.url}/metrics   (demo cluster, refreshed every 10 s)
  Prometheus    {prometheus.url}/rules   and /alerts, /graph
  Alertmanager  {am.url}
  Grafana       not included: add a Prometheus data source at {prometheus.url} and import
                dashboards/*.json (dashboards/README.md)
Slack and PagerDuty notifications are printed below as Alertmanager sends them.
""",
            flush=True,
        )
        stop.running = True
        processes = [exporter.process, prometheus.process, am.process]
        while not stop.requested.wait(1.0):
            for process in processes:
                if process.popen.poll() is not None:
                    print(f"{process.name} exited:\n{process.log_tail()}", file=sys.stderr)
                    return 1
        print("stopping", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporter-port", type=int, default=9877)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    parser.add_argument("--config", type=Path, help="exporter configuration (budgets, ...)")
    args = parser.parse_args(argv)
    missing = [b for b in (PROMETHEUS, ALERTMANAGER) if not Path(b).exists()]
    if missing:
        print(f"stack: {', '.join(missing)} not found: run `make tools`", file=sys.stderr)
        return 1

    stop = StopSignal()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    workdir = Path(tempfile.mkdtemp(prefix="aifinops-stack-"))
    try:
        return run(args, workdir, stop)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stack: interrupted during start-up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
