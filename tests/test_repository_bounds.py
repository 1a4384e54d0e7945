"""The suite needs nothing beside the clone: recorded fixtures live in tests/fixtures/."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO, outside_the_clone

# A literal that points beside the checkout: the shared folder, a sibling, the old absolute path.
_OUTSIDE = re.compile(r"""\.\./shared|["']/work/|parent\s*/\s*["']shared["']""")


def test_no_test_or_benchmark_names_a_path_beside_the_clone() -> None:
    offenders = [
        f"{p.relative_to(REPO)}:{n}"
        for top in ("tests", "bench", "scripts", "devtools", ".ci")
        for p in sorted((REPO / top).rglob("*"))
        if p.is_file() and p.suffix in {".py", ".sh", ""} and p.name != "test_repository_bounds.py"
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert offenders == []


def test_opening_a_file_beside_the_clone_fails() -> None:
    sibling = REPO.parent / "shared" / "fixtures" / "PROVENANCE.md"
    assert outside_the_clone(str(sibling))
    with pytest.raises(PermissionError, match="beside the clone"):
        sibling.open()


def test_every_recorded_fixture_has_provenance() -> None:
    fixtures = REPO / "tests" / "fixtures"
    provenance = (fixtures / "PROVENANCE.md").read_text()
    # Every file, in sub-folders too, by its path under tests/fixtures/ (``hami/…``).
    recorded = [
        p.relative_to(fixtures).as_posix()
        for p in fixtures.rglob("*")
        if p.is_file() and p.name not in {"PROVENANCE.md", "LICENSES.md"}
    ]
    assert recorded
    assert [name for name in recorded if f"`{name}`" not in provenance] == []


def test_licence_and_notice_ship_with_the_repository() -> None:
    assert "Apache License" in (REPO / "LICENSE").read_text()
    notice = (REPO / "NOTICE").read_text()
    assert "MIT" in notice and "llm_prices.json" in notice
