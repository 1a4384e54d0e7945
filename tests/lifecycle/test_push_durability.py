"""Pushed usage is durable once acknowledged (issue 14, item 7), through the real app factory.

A 202 means the batch is in the push journal beside ``state.path`` (fsync-ed), so a stop
before the next refresh (SIGTERM: the app's cleanup), a crash (the files copied while the
app still runs, then the app abandoned) or a retry after either never loses nor doubles it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from aifinops.settings import settings_from_mapping
from aifinops.usage import PushJournal, UsageBatch, UsageStore
from aifinops.web.app import REFRESHER, create_app
from tests.web.conftest import T0, Clock, parse_page, series


def _config(state: Path) -> dict[str, Any]:
    return {
        "tokens": {"push": {"enabled": True}},
        # save_interval long: only the app's cleanup (SIGTERM) writes after the first refresh
        "state": {"path": str(state), "save_interval_seconds": 3600},
    }


async def _app(aiohttp_client: Any, state: Path, clock: Clock) -> Any:
    app = create_app(settings_from_mapping(_config(state)), clock=clock, run_loop=False)
    return await aiohttp_client(app)


def _rec(n: int, record_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant": "search", "model": "gpt-4o", "input_tokens": n}
    if record_id is not None:
        out["record_id"] = record_id
    return out


async def _push(client: Any, *records: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/api/v1/usage", json={"records": list(records)})
    assert resp.status == 202, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def _counted(client: Any) -> float:
    """Input tokens this process counted for (search, gpt-4o) after a refresh."""
    await client.app[REFRESHER].refresh_once()
    page = parse_page(await (await client.get("/metrics")).text())
    got = series(page, "aifinops_tokens_total", tenant="search", token_type="input")
    return got.get(("gpt-4o", "openai"), 0.0)


async def test_a_push_acknowledged_before_sigterm_is_counted_after_the_restart(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    clock = Clock(T0)
    state = tmp_path / "state.json"
    first = await _app(aiohttp_client, state, clock)
    await _push(first, _rec(700, "counted"))
    assert await _counted(first) == 700  # counted by a refresh, saved with the ledger
    await _push(first, _rec(1000, "r1"))  # acknowledged; SIGTERM comes before a refresh
    clock.now = T0 + 5
    await first.close()

    clock.now = T0 + 10
    second = await _app(aiohttp_client, state, clock)
    # the new process counts exactly what the old one acknowledged but had not counted
    assert await _counted(second) == 1000
    # a client's retry of either batch after the restart is a duplicate, not counted again
    assert await _push(second, _rec(1000, "r1"), _rec(700, "counted")) == {
        "accepted": 0,
        "duplicates": 2,
    }
    clock.now = T0 + 20
    assert await _counted(second) == 1000
    await second.close()


async def test_a_push_acknowledged_before_a_crash_is_counted_once(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    clock = Clock(T0)
    state = tmp_path / "live" / "state.json"
    state.parent.mkdir()
    first = await _app(aiohttp_client, state, clock)
    await _push(first, _rec(300, "a"))
    assert await _counted(first) == 300  # the periodic save happened after this refresh
    await _push(first, _rec(40, "b"), _rec(2, "c"))
    await _push(first, _rec(5))  # no record_id: durable all the same
    # kill -9 now: what is on disk is all the next process gets
    crashed = tmp_path / "crashed"
    shutil.copytree(state.parent, crashed)
    assert list(crashed.glob("state.json.push-journal.*"))
    await first.close()

    clock.now = T0 + 30
    second = await _app(aiohttp_client, crashed / "state.json", clock)
    assert await _counted(second) == 47  # 300 was in the saved ledger already
    assert (await _push(second, _rec(40, "b")))["duplicates"] == 1
    await second.close()


async def test_a_push_that_cannot_be_journalled_is_refused_and_adds_nothing(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    clock = Clock(T0)
    state = tmp_path / "state.json"
    client = await _app(aiohttp_client, state, clock)
    journal = client.app[REFRESHER]._state_store.journal
    assert journal is not None
    # the next segment's name is taken by a directory: the journal write fails
    (tmp_path / f"{journal.prefix}{1:012d}").mkdir()
    resp = await client.post("/api/v1/usage", json={"records": [_rec(9, "x")]})
    assert resp.status == 503 and (await resp.json())["error"] == "not_durable"
    assert resp.headers["Retry-After"]
    assert await _counted(client) == 0
    (tmp_path / f"{journal.prefix}{1:012d}").rmdir()
    assert await _push(client, _rec(9, "x")) == {"accepted": 1, "duplicates": 0}  # not a dup
    assert await _counted(client) == 9
    await client.close()


def test_journal_replay_skips_a_torn_line_and_what_the_state_file_holds(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    journal = PushJournal(state)
    store = UsageStore()
    store.restore(None, journal)
    for i in range(3):
        store.apply(UsageBatch.model_validate({"records": [_rec(10**i, f"id{i}")]}))
    # a crash in the middle of a write leaves half a line at the end
    (segment,) = tmp_path.glob("state.json.push-journal.*")
    with segment.open("ab") as f:
        f.write(b'{"seq":4,"records":[["search","gpt-4o","",99')
    journal.close()
    # a write of batch 4 that failed in a new segment (torn line, then a 503), and the
    # client's retry: the reopened segment's torn line does not swallow the retried batch
    torn = tmp_path / f"{journal.prefix}{4:012d}"
    torn.write_bytes(b'{"seq":4,"records":[["search","gpt-4o","",1000,0,0,"id3"]')
    store.apply(UsageBatch.model_validate({"records": [_rec(1000, "id3")]}))
    # and one whose line reached the disk although its fsync failed, retried as seq 5
    with torn.open("ab") as f:
        f.write(b'{"seq":5,"records":[["search","gpt-4o","",7,0,0,"id4"]]}\n')
    store.apply(UsageBatch.model_validate({"records": [_rec(7, "id4")]}))
    journal.close()

    again = UsageStore()
    assert again.restore(None, PushJournal(state)) == 6
    (obs,) = [o for o in again.snapshot() if o.token_type == "input"]
    assert obs.value == 1118  # 1 + 10 + 100 + 1000 + 7: id4 once
    # a state file that holds the first batch: only the later two are replayed
    saved = store.export({})
    assert saved.seq == 5
    partial = type(saved)(1, (("search", "gpt-4o", "", "input", 1),), ("id0",))
    third = UsageStore()
    assert third.restore(partial, PushJournal(state)) == 5
    (obs,) = [o for o in third.snapshot() if o.token_type == "input"]
    assert obs.value == 1118


def test_the_real_cli_keeps_a_push_across_sigterm_and_kill_9(tmp_path: Path) -> None:
    """The CLI with a refresh interval of an hour: every push lands after the one refresh at
    start, so only the journal and the state file can carry it to the next process."""
    import signal

    import httpx
    import yaml

    from tests.lifecycle.proc import assert_clean_stderr, start_exporter
    from tests.lifecycle.test_process import sample

    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "refresh": {"interval_seconds": 3600},
                "tokens": {"push": {"enabled": True}},
                "state": {"path": str(tmp_path / "state" / "state.json")},
            }
        )
    )

    def refreshed(exporter: Any) -> str:
        """/metrics once the one refresh at start has completed."""
        deadline = time.monotonic() + 30
        while True:
            page: str = exporter.wait_until("/metrics", 200).text
            if sample(page, "aifinops_refreshes_total"):
                return page
            assert time.monotonic() < deadline, exporter.stderr()[-2000:]
            time.sleep(0.1)

    def counted(exporter: Any) -> float | None:
        page = refreshed(exporter)
        return sample(page, "aifinops_tokens_total", tenant="search", token_type="input")

    def push(exporter: Any, n: int, record_id: str) -> httpx.Response:
        refreshed(exporter)  # so that no refresh of this process counts the push
        body = {"records": [_rec(n, record_id)]}
        return httpx.post(exporter.url + "/api/v1/usage", json=body, timeout=10)

    first = start_exporter(tmp_path, "--config", str(config))
    try:
        assert push(first, 1000, "a").status_code == 202
        first.signal(signal.SIGTERM)  # long before the next refresh
        assert first.proc.wait(timeout=30) == 0
        assert_clean_stderr(first.stderr())
    finally:
        first.stop()

    second = start_exporter(tmp_path, "--config", str(config))
    try:
        assert push(second, 1000, "a").json() == {"accepted": 0, "duplicates": 1}  # a retry
        assert push(second, 20, "b").status_code == 202
        assert counted(second) == 1000  # its refresh at start counted the first process's
        second.proc.kill()  # kill -9: no final save
        second.proc.wait(timeout=30)
    finally:
        second.stop()

    third = start_exporter(tmp_path, "--config", str(config))
    try:
        # 1000 is in the ledger the second process saved after its refresh; 20 only in the
        # journal
        assert counted(third) == 20
        assert push(third, 20, "b").json() == {"accepted": 0, "duplicates": 1}
    finally:
        third.stop()
