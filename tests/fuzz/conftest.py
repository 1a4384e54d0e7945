"""Fuzzing budget and bookkeeping.

Every fuzz test uses :data:`FUZZ` (``max_examples`` from ``AIFINOPS_FUZZ_EXAMPLES``, default
:data:`DEFAULT_EXAMPLES`: CI stays around half a minute; set e.g. 20000 for a long run) and
calls :func:`tried` once per input, so the session ends with the number of inputs each parser
was given (printed in the terminal summary).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 150
EXAMPLES = int(os.environ.get("AIFINOPS_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# For the tests that go through HTTP (a request per input).
FUZZ_HTTP = settings(FUZZ, max_examples=max(10, EXAMPLES // 3))

TRIED: Counter[str] = Counter()


def tried(parser: str) -> None:
    TRIED[parser] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TRIED:
        return
    total = sum(TRIED.values())
    terminalreporter.write_sep("-", f"fuzz: {total} inputs tried ({EXAMPLES} examples/test)")
    for parser, n in sorted(TRIED.items()):
        terminalreporter.write_line(f"  {parser:<32} {n}")
