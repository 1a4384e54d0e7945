"""A refresh's fetches take large bodies one source at a time (``sources.base.LargeBodies``):
a body past ``LARGE_BODY_BYTES`` waits until no other source of the cycle holds one, and its
source keeps the gate until its fetch (parse included) ends, so the big bodies and what their
parses build do not pile up. Small bodies never wait; the wait is bounded, so a gate that is
never given back delays a fetch but does not fail it; a failed fetch gives it back; the data
is what it would have been."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from aifinops import offload
from aifinops.exposition.families import BuildInfo
from aifinops.refresh import Refresher
from aifinops.sources.base import (
    LARGE_BODY_BYTES,
    LargeBodies,
    Slot,
    SourceError,
    get_bytes,
)
from tests.model.builders import context

BIG = LARGE_BODY_BYTES + 1024 * 1024
CHUNK = 1024 * 1024


@pytest.fixture(autouse=True)
def _pinned_mmap_threshold() -> None:
    """As the exporter runs (``offload.apply_runtime_settings``): these tests' bodies are
    then mapped and unmapped, not left in the heap for later memory tests to reuse."""
    offload.pin_mmap_threshold()


class Chunks(httpx.AsyncByteStream):
    """A body arriving a chunk at a time, other tasks running between chunks (a socket)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self._body), CHUNK):
            await asyncio.sleep(0)
            yield self._body[at : at + CHUNK]


def bodies(sizes: dict[str, int], *, declared: bool = True) -> httpx.MockTransport:
    """``/<name>`` answers ``sizes[name]`` bytes of ``name``'s first letter, streamed, with
    a Content-Length when ``declared``."""

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.strip("/")
        body = name[:1].encode() * sizes[name]
        headers = {"content-length": str(len(body))} if declared else {}
        return httpx.Response(200, headers=headers, stream=Chunks(body))

    return httpx.MockTransport(handler)


class Reader:
    """A source reading ``/<name>`` and then parsing it for a while (on the loop: what
    matters is that the body is held meanwhile)."""

    slot, local, min_interval_seconds = Slot.LATENCY, False, 0.0
    first_read_baseline, targets = False, None

    def __init__(self, name: str, log: list[tuple[str, str, float]]) -> None:
        self.name = name
        self._log = log

    async def fetch(self, client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
        body = await get_bytes(client, f"http://up/{self.name}", timeout=5, max_bytes=2 * BIG)
        self._log.append((self.name, "got", time.monotonic()))
        await asyncio.sleep(0.05)  # the parse
        self._log.append((self.name, "parsed", time.monotonic()))
        return {(self.name, "p"): float(len(body))}


def spans(log: list[tuple[str, str, float]], name: str) -> tuple[float, float]:
    got = next(t for n, e, t in log if n == name and e == "got")
    parsed = next(t for n, e, t in log if n == name and e == "parsed")
    return got, parsed


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_large_bodies_of_a_cycle_are_read_and_parsed_one_at_a_time(declared: bool) -> None:
    log: list[tuple[str, str, float]] = []
    sizes = {"aaa": BIG, "bbb": BIG, "ccc": 1000}
    sources = [(Reader(name, log), 5.0, 600.0) for name in sizes]
    transport = bodies(sizes, declared=declared)
    async with httpx.AsyncClient(transport=transport) as client:
        refresher = Refresher(sources, context(), BuildInfo("t", "t", "t"), client, lambda: 1e9)
        snap = await refresher.refresh_once()
    assert snap.status is not None and all(s.up for s in snap.status.sources)
    # Each source's data is its whole body, as without the gate.
    assert refresher._inputs()[2].latencies == {(n, "p"): float(s) for n, s in sizes.items()}
    a, b = spans(log, "aaa"), spans(log, "bbb")
    first, second = sorted([a, b])
    assert first[1] <= second[0], "a second large body came in while the first was parsed"
    # The small one did not wait for either.
    small = spans(log, "ccc")
    assert small[1] < second[0]
    assert refresher._large_bodies.admitted == 2 and refresher._large_bodies.bypassed == 0


async def test_small_bodies_and_fetches_outside_a_scope_never_wait() -> None:
    gate = LargeBodies()
    holding, release = asyncio.Event(), asyncio.Event()
    transport = bodies({"big": BIG, "other": BIG, "small": 1000})
    async with httpx.AsyncClient(transport=transport) as client:

        async def holder() -> None:
            async with gate.scope(wait=5):
                await get_bytes(client, "http://up/big", timeout=5, max_bytes=2 * BIG)
                holding.set()
                await release.wait()

        task = asyncio.create_task(holder())
        await holding.wait()
        started = time.monotonic()
        async with gate.scope(wait=5):
            small = await get_bytes(client, "http://up/small", timeout=5, max_bytes=BIG)
        # Outside any scope (tests, benchmarks, deferred fetches): no gate at all.
        unscoped = await get_bytes(client, "http://up/other", timeout=5, max_bytes=2 * BIG)
        assert time.monotonic() - started < 2
        release.set()
        await task
    assert len(small) == 1000 and len(unscoped) == BIG
    assert gate.admitted == 1


async def test_a_gate_never_given_back_delays_a_fetch_but_does_not_fail_it() -> None:
    gate = LargeBodies()
    holding, release = asyncio.Event(), asyncio.Event()
    transport = bodies({"stuck": BIG, "late": BIG})
    async with httpx.AsyncClient(transport=transport) as client:

        async def stuck() -> None:  # a slow parse, or a fetch waiting on the other one
            async with gate.scope(wait=5):
                await get_bytes(client, "http://up/stuck", timeout=5, max_bytes=2 * BIG)
                holding.set()
                await release.wait()

        task = asyncio.create_task(stuck())
        await holding.wait()
        started = time.monotonic()
        async with gate.scope(wait=0.2):
            late = await get_bytes(client, "http://up/late", timeout=5, max_bytes=2 * BIG)
            # Gave up waiting once: the rest of this fetch does not wait again.
            again = await get_bytes(client, "http://up/late", timeout=5, max_bytes=2 * BIG)
        waited = time.monotonic() - started
        release.set()
        await task
    assert len(late) == len(again) == BIG
    assert 0.2 <= waited < 1.5
    assert gate.bypassed == 1 and gate.admitted == 1


async def test_a_failed_large_body_gives_the_gate_back() -> None:
    gate = LargeBodies()
    # No Content-Length: admitted once large, then cut off at the cap mid-body.
    transport = bodies({"huge": 3 * BIG, "next": BIG}, declared=False)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(SourceError) as failed:
            async with gate.scope(wait=5):
                await get_bytes(client, "http://up/huge", timeout=5, max_bytes=2 * BIG)
        assert failed.value.reason == "too_large"
        started = time.monotonic()
        async with gate.scope(wait=5):
            body = await get_bytes(client, "http://up/next", timeout=5, max_bytes=2 * BIG)
        assert time.monotonic() - started < 2
    assert len(body) == BIG and gate.admitted == 2


async def test_several_large_bodies_of_one_fetch_share_its_claim() -> None:
    """A source reading several large pages at once (scrape targets) is one claimant: its
    pages do not wait for each other."""
    gate = LargeBodies()
    transport = bodies({"p1": BIG, "p2": BIG, "p3": BIG})
    async with httpx.AsyncClient(transport=transport) as client, gate.scope(wait=5):
        started = time.monotonic()
        got = await asyncio.gather(
            *(
                get_bytes(client, f"http://up/{p}", timeout=5, max_bytes=2 * BIG)
                for p in ("p1", "p2", "p3")
            )
        )
        assert time.monotonic() - started < 2
    assert [len(b) for b in got] == [BIG] * 3
    assert gate.admitted == 1 and gate.bypassed == 0


class Trickle(httpx.AsyncByteStream):
    """A hostile upstream: a large body's first chunks, then nothing (until cancelled)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"x" * BIG
        await asyncio.Event().wait()
        yield b""  # pragma: no cover


async def test_a_stalled_large_body_delays_the_others_of_its_cycle_at_most_half_their_timeout() -> (
    None
):
    log: list[tuple[str, str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/stall":
            return httpx.Response(200, stream=Trickle())
        return httpx.Response(200, stream=Chunks(b"b" * BIG))

    stall, other = Reader("stall", log), Reader("bbb", log)
    # The stalled one first, so that it holds the gate when the other's body comes in.
    sources = [(stall, 0.8, 600.0), (other, 0.6, 600.0)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        refresher = Refresher(sources, context(), BuildInfo("t", "t", "t"), client, lambda: 1e9)
        started = time.monotonic()
        snap = await refresher.refresh_once()
        took = time.monotonic() - started
    assert snap.status is not None
    up = {s.name: s.up for s in snap.status.sources}
    # The stalled source fails by its own timeout (1.5 x 0.8 s); the other one waited at
    # most half its timeout for the gate, then read its body as it would have.
    assert up == {"stall": False, "bbb": True}
    assert refresher._inputs()[2].latencies == {("bbb", "p"): float(BIG)}
    got = next(t for n, e, t in log if n == "bbb" and e == "got")
    assert got - started < 0.8 * 1.5  # not after the stalled fetch ended
    assert took < 0.8 * 1.5 + 1.0
    assert refresher._large_bodies.bypassed == 1
