"""Figures the load test measured, printed at the end of the session."""

from __future__ import annotations

from typing import Any

RESULTS: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.write_sep("-", "load test")
        for key, text in RESULTS.items():
            terminalreporter.write_line(f"  {key:<28} {text}")
