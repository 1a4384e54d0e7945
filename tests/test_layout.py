"""The test folders mirror the package (docs/architecture.md, "Where the tests are").

A new folder of tests must be one of the package's floors or a named cross-cutting suite and
appear in the architecture page's table, so a reader finds a module's tests where it lives.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
FLOORS = {"model", "sources", "exposition", "web", "config", "runtime", "demo"}
SUITES = {"e2e", "fuzz", "faults", "load", "lifecycle", "security", "artifacts", "deploy", "bench"}
DATA = {"fixtures", "golden", "__pycache__"}


def test_every_test_folder_is_a_floor_or_a_suite() -> None:
    folders = {p.name for p in TESTS.iterdir() if p.is_dir()}
    assert folders - FLOORS - SUITES - DATA == set()


def test_every_floor_mirrors_a_package_module() -> None:
    package = ROOT / "exporter" / "aifinops"
    for floor in FLOORS - {"config", "runtime"}:
        assert (package / floor).is_dir(), floor


def test_the_architecture_page_lists_every_folder() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## Where the tests are", 1)[1]
    listed = set(re.findall(r"`([a-z0-9]+)/`", section))
    present = {p.name for p in TESTS.iterdir() if p.is_dir()} - DATA
    assert present <= listed
