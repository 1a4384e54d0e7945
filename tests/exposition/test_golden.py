"""A golden exposition of a small literal cluster: stable bytes, and promtool finds nothing."""

import os
import subprocess
from pathlib import Path

from aifinops.exposition.families import BuildInfo, cost_families, self_families
from aifinops.exposition.render import render
from aifinops.model.inputs import AllocationSet, Inputs
from aifinops.model.report import ModelState, build_report
from aifinops.status import RefreshStatus, SourceStatus
from tests.model.builders import context, small_cluster
from tests.tools import require_binary

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "small_cluster.prom"


def golden_bytes() -> bytes:
    allocs, gpus = small_cluster()
    inputs = Inputs(gpus=tuple(gpus), allocations=AllocationSet(1.0, tuple(allocs)))
    ctx = context(window=600.0)
    report, state = build_report(inputs, ctx, ModelState(), 1_700_000_000.0, 1_700_000_000.0)
    report, _ = build_report(inputs, ctx, state, 1_700_000_900.0, 1_700_000_900.0)
    status = RefreshStatus(
        sources=(
            SourceStatus("dcgm", True, 0.5, False, 0.01, {}),
            SourceStatus("opencost", False, 61.0, False, 2.0, {"timeout": 3}, "timed out"),
        ),
        duration_seconds=0.25,
        completed_at=1_700_000_900.0,
        refreshes=2,
    )
    build = BuildInfo("0.0.0-test", "0.0.0-test", "test")
    return render(cost_families(report) + self_families(status, build))


def test_golden_exposition_is_stable():
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_bytes(golden_bytes())
    assert golden_bytes() == GOLDEN.read_bytes(), "regenerate with UPDATE_GOLDEN=1"


def test_promtool_check_metrics_finds_nothing():
    promtool = require_binary("promtool")
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=GOLDEN.read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b""
