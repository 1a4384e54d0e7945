"""What a new user runs first: the README's real-cluster command with config/example.yaml
starts as any user, and the Makefile's targets are listed and install what they say."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aifinops.settings import load_settings
from tests.lifecycle.proc import assert_clean_stderr, start_exporter

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.yaml"


def _paths(node: Any, where: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _paths(v, f"{where}.{k}".lstrip("."))]
    if isinstance(node, list | tuple):
        return [p for i, v in enumerate(node) for p in _paths(v, f"{where}[{i}]")]
    return [f"{where}={node}"] if isinstance(node, Path) else []


def test_the_example_configuration_needs_no_file_a_user_may_not_own() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.state.path is None  # off until set (its comment says how)
    assert _paths(settings.model_dump()) == []
    assert "# path: /var/lib/aifinops/state.json" in EXAMPLE.read_text()


def test_the_example_configuration_starts(tmp_path: Path) -> None:
    """Upstreams are example hosts that do not resolve here: the exporter serves anyway."""
    exporter = start_exporter(tmp_path, "--config", str(EXAMPLE))
    try:
        assert exporter.wait_until("/healthz", 200).json() == {"status": "ok"}
        page = exporter.get("/metrics")
        assert page.status_code == 200 and "aifinops_build_info" in page.text
    finally:
        assert exporter.stop() == 0
    assert_clean_stderr(exporter.stderr().replace('"level": "error"', ""))


def make(*args: str) -> str:
    binary = shutil.which("make")
    if binary is None:
        pytest.skip("make not installed")
    return subprocess.run(
        [binary, "-s", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


def phony_targets() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^\.PHONY:(.*)$", text, re.M)
    assert match
    return match.group(1).split()


def test_make_help_lists_every_target() -> None:
    listed = re.findall(r"^\s*make (\S+)", make("help"), re.M)
    assert sorted(listed) == sorted(phony_targets())
    for target in ("test-fast", "fmt", "kustomize", "clean"):
        assert target in listed


def test_make_run_installs_the_runtime_only_and_test_the_test_toolchain(tmp_path: Path) -> None:
    venv = f"VENV={tmp_path / 'venv'}"
    run = make("-n", "run", venv)
    assert "pip install -q -e ." in run and "[test]" not in run
    test = make("-n", "test", venv)
    assert "pip install -q -e '.[test]'" in test
