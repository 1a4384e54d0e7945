"""``--demo`` runs its fake upstreams in a child process, started and stopped with the
exporter: the exporter's process serves only the exporter (no fake's CPU on its loop)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.lifecycle.proc import assert_clean_stderr, start_exporter
from tests.web.conftest import parse_page


def children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` and their command lines (Linux /proc)."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            out[int(child)] = cmdline.decode()
    return out


def descendants(pid: int) -> dict[int, str]:
    """Children, theirs, and so on (the fakes are the refresh engine's child by default)."""
    out = children(pid)
    for child in list(out):
        out.update(descendants(child))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def test_demo_fakes_run_in_a_child_stopped_with_the_exporter(tmp_path: Path) -> None:
    exporter = start_exporter(tmp_path, "--demo")
    try:
        exporter.wait_until("/readyz", 200)
        family = descendants(exporter.proc.pid)
        fakes = [p for p, cmd in family.items() if "aifinops.demo.child" in cmd]
        assert len(fakes) == 1, family
        # The exporter reads the fakes over HTTP: every upstream up, budgets in.
        page = parse_page(exporter.get("/metrics").text)
        up = {labels["source"]: v for labels, v in page["aifinops_source_up"]}
        assert up["dcgm"] == up["opencost"] == 1.0
        for _ in range(100):
            page = parse_page(exporter.get("/metrics").text)
            if page.get("aifinops_month_to_date_ready") == [({}, 1.0)]:
                break
            time.sleep(0.1)
        assert page["aifinops_month_to_date_ready"] == [({}, 1.0)]
        assert page["aifinops_tenant_budget_usd"]
        exporter.signal(signal.SIGTERM)
        assert exporter.proc.wait(timeout=30) == 0
        assert not alive(fakes[0])
        assert_clean_stderr(exporter.stderr())
    finally:
        exporter.stop()
