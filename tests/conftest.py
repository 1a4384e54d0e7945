"""Suite-wide guard: a test reads only what a plain clone has.

`git clone … && make test` must pass with nothing beside the clone, so opening a path that
lies beside the repository (the shared folder or any other sibling of the checkout) fails at
once, naming the path. Temporary files, the virtual environment and the system are not beside
the clone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from aifinops.model.llm_prices import LlmPriceCatalog
from tests.upstream_data import price_catalog

REPO = Path(__file__).resolve().parents[1]
_BESIDE = str(REPO.parent) + os.sep
_INSIDE = str(REPO) + os.sep


def outside_the_clone(path: str) -> bool:
    """True for a path next to the checkout (its parent's other children), not inside it."""
    full = os.path.realpath(path)
    return full.startswith(_BESIDE) and not (full + os.sep).startswith(_INSIDE)


def _guard(event: str, args: tuple[object, ...]) -> None:
    if event != "open" or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str) and outside_the_clone(path):
        raise PermissionError(f"tests read only the repository; {path!r} lies beside the clone")


sys.addaudithook(_guard)


@pytest.fixture(scope="session")
def catalog() -> LlmPriceCatalog:
    """LiteLLM's recorded price subset as a catalog (model and source tests share it)."""
    return price_catalog()
