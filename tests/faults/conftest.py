"""The fault suite runs the exporter as production runs it: with the runtime settings
``aifinops.__main__`` applies (:func:`aifinops.offload.apply_runtime_settings`: the GC
tuning under which a failed large answer once stayed in memory for good, issue 14)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aifinops.offload import apply_runtime_settings


@pytest.fixture(autouse=True)
def production_runtime() -> Iterator[None]:
    undo = apply_runtime_settings()
    try:
        yield
    finally:
        undo()
