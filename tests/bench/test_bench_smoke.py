"""``python -m bench`` runs at the smallest size and prints its table (no timing is judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_ROWS = (
    "refresh first s",
    "month to date ready s",
    "fetch+parse opencost_month",
    "refresh steady s (median)",
    "fetch+parse opencost",
    "model",
    "/metrics gzip p50 ms, idle",
    "/metrics gzip p99 ms, in refresh",
    "/readyz p99 ms, idle",
    "peak RSS MiB",
    "series",
    "exposition MB gzip",
    "generate_latest / render",
    "prometheus_client / ours",
)


def test_bench_runs_at_the_smallest_size_and_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--sizes", "20", "--quick", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    header = next(line for line in out.splitlines() if line.startswith("| figure"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "figure",
        "20 GPUs",
        "target (20 GPUs)",
        "met",
    ]
    for row in EXPECTED_ROWS:
        assert any(
            line.startswith(f"| {row}") or f"|   {row}" in line for line in out.splitlines()
        ), row
    assert "(samples differ!)" not in out
    assert "code measured:" in out
