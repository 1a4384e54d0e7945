"""Versions published in ``aifinops_build_info``.

``RULES_VERSION`` is the rule bundle's version; ``rules/VERSION`` carries the same string for
tools outside Python, and a test fails when the two differ.

:func:`revision` is the source revision (git commit) the exporter was built from, first
found of: the ``AIFINOPS_REVISION`` environment variable (the container image bakes it at
build time: ``docker build --build-arg REVISION=$(git rev-parse HEAD)``), the git checkout the
package runs from (``make run``, an editable install), else ``unknown``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

__version__ = "0.1.0"
RULES_VERSION = "0.4.0"

REVISION_ENV = "AIFINOPS_REVISION"
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


@functools.cache
def revision() -> str:
    """The source revision, read once per process (see the module docstring)."""
    baked = os.environ.get(REVISION_ENV, "").strip()
    if baked:
        return baked
    return _checkout_revision(Path(__file__).resolve().parents[2]) or "unknown"


def _checkout_revision(root: Path) -> str | None:
    """``git rev-parse HEAD`` of ``root`` when it is a git checkout (a worktree included)."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            [git, "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and _SHA.match(sha) else None
