"""Start-up and reload refuse what would blank the exporter (issue 14, item 6).

* An empty or source-less configuration is an error at start-up, for ``--check-config`` and
  for a reload (``POST /-/reload``; SIGHUP runs the same ``Reloader``), unless
  ``allow_no_sources: true``; a refused reload keeps the old configuration and sets
  ``aifinops_config_last_reload_successful`` 0.
* The configuration and state paths must be regular files within a bound: a FIFO does not
  hang start-up or a reload, a symlink to ``/dev/zero`` is not read until memory runs out.
  The process tests run the real CLI with a timeout, so a regression fails instead of
  hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifinops.settings import ConfigError, load_settings, settings_from_mapping
from aifinops.web.app import REFRESHER, create_app
from aifinops.web.lifecycle import RELOADER
from tests.faults.rig import closed_port_url
from tests.lifecycle.proc import free_port, run_cli
from tests.web.conftest import parse_page

GOOD: dict[str, Any] = {
    "server": {"enable_lifecycle": True},
    "sources": {"opencost": {"url": "http://127.0.0.1:9", "timeout_seconds": 1}},
}


def _check(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "--config",
        str(config),
        "--check-config",
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIFINOPS__")},
    )


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("", 2, "is empty"),
        ("# only a comment\n", 2, "is empty"),
        ("tenancy: {namespaces: {team-a: a}}\n", 2, "no source is enabled"),
        ("sources: {opencost: {enabled: false, url: http://x}}\n", 2, "no source is enabled"),
        ("allow_no_sources: true\n", 0, "configuration OK"),
        ("tokens: {push: {enabled: true}}\n", 0, "configuration OK"),
    ],
    ids=["empty", "comment", "no-sources", "disabled", "allowed", "push-only"],
)
def test_check_config_refuses_an_empty_or_sourceless_file(
    tmp_path: Path, text: str, code: int, needle: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    proc = _check(config)
    assert proc.returncode == code, proc.stderr
    assert needle in (proc.stdout + proc.stderr)


def test_a_fifo_or_dev_zero_config_fails_fast(tmp_path: Path) -> None:
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "config.yaml"
    zero.symlink_to("/dev/zero")
    for config, kind in ((fifo, "a FIFO"), (zero, "a character device")):
        started = time.monotonic()
        proc = _check(config)  # a regression times out (subprocess.TimeoutExpired)
        assert proc.returncode == 2 and kind in proc.stderr, proc.stderr
        assert time.monotonic() - started < 30
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(17 * 1024 * 1024)  # sparse: over the 16 MiB bound
    with pytest.raises(ConfigError, match="over the"):
        load_settings(big, environ={})


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_dev_zero_state_path_stops_start_up(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state.json"
    if kind == "fifo":
        os.mkfifo(state)
    else:
        state.symlink_to("/dev/zero")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"sources": {"opencost": {"url": closed_port_url()}}, "state": {"path": str(state)}}
        )
    )
    proc = run_cli("--config", str(config), "--port", str(free_port()))
    assert proc.returncode == 2, proc.stderr
    assert "state.path" in proc.stderr and "not a regular file" in proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_the_state_store_never_blocks_on_or_reads_past_a_bad_file(
    tmp_path: Path, kind: str
) -> None:
    """The loader itself (an app built without the CLI's start-up check): the file is moved
    aside with the reason and the exporter starts empty."""
    from aifinops.model.finance import FinanceContext
    from aifinops.statefile import MAX_STATE_BYTES, StateStore

    state = tmp_path / "state.json"
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "dev-zero":
        state.symlink_to("/dev/zero")
    else:
        with state.open("wb") as f:
            f.truncate(MAX_STATE_BYTES + 1)
    store = StateStore.from_settings(settings_from_mapping({"state": {"path": str(state)}}))
    assert store is not None
    started = time.monotonic()
    assert store.load(time.time(), FinanceContext()) is None
    assert time.monotonic() - started < 5
    assert not state.exists() and not state.is_symlink()  # moved aside
    assert list(tmp_path.glob("state.json.corrupt-*"))


async def _reload_with(client: Any, config: Path) -> tuple[int, str, float | None]:
    client.app[RELOADER].load = lambda: load_settings(config, environ={})
    resp = await client.post("/-/reload")
    page = parse_page(await (await client.get("/metrics")).text())
    (ok,) = [v for _, v in page["aifinops_config_last_reload_successful"]]
    return resp.status, await resp.text(), ok


async def test_reload_refuses_empty_sourceless_fifo_and_dev_zero(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(settings_from_mapping(GOOD), run_loop=False))
    await client.app[REFRESHER].refresh_once()
    names = {s.name for s in client.app[REFRESHER].snapshot.status.sources}
    assert "opencost" in names

    empty, sourceless, fifo, zero = (tmp_path / n for n in ("e.yaml", "s.yaml", "f", "z"))
    empty.write_text("")
    sourceless.write_text(yaml.safe_dump({**GOOD, "sources": {}}))
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    for config, needle in (
        (empty, "is empty"),
        (sourceless, "no source is enabled"),
        (fifo, "a FIFO"),
        (zero, "a character device"),
    ):
        status, text, ok = await _reload_with(client, config)
        assert status == 500 and needle in text, text
        assert ok == 0.0
        # the old configuration stays: its sources are still refreshed
        snap = await client.app[REFRESHER].refresh_once()
        assert snap.status is not None
        assert {s.name for s in snap.status.sources} == names

    allowed = tmp_path / "allowed.yaml"
    allowed.write_text(yaml.safe_dump({**GOOD, "sources": {}, "allow_no_sources": True}))
    status, text, ok = await _reload_with(client, allowed)
    assert status == 200 and ok == 1.0, text


def test_secret_files_that_are_fifos_fail_fast(tmp_path: Path) -> None:
    """An upstream bearer token file, an API token file: a FIFO is refused, not waited on.
    (On a regression the reader blocks: the test then opens the FIFO's other end so that
    it fails instead of hanging.)"""
    import threading

    from aifinops.sources.base import SourceError, read_bearer_token
    from aifinops.web.auth import TokenStore

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(read_bearer_token(fifo))
        except SourceError as exc:
            outcome.append(exc)
        with pytest.raises(ConfigError, match="missing, unreadable or empty"):
            TokenStore.from_settings(
                settings_from_mapping({"api": {"read_token_files": [fifo]}}).api
            )
        outcome.append("api refused")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        for _ in range(50):  # release the blocked reader(s): a writer that comes and goes
            with contextlib.suppress(OSError):  # ENXIO: no reader at this instant
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(0.1)
        pytest.fail("reading a FIFO token file blocked")
    assert isinstance(outcome[0], SourceError) and "FIFO" in str(outcome[0])
    assert outcome[1] == "api refused"
