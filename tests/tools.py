"""Helpers for tests that need a real binary (promtool, prometheus, amtool, ...)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """Path of ``name``; skip outside CI when it is missing, fail in CI (CI never skips)."""
    path = shutil.which(name)
    if path:
        return path
    message = (
        f"{name} not found: run `make tools` (Debian packages prometheus, prometheus-alertmanager)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
