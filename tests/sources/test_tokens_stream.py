"""The token scrape's page parsed as it arrives (``SeriesReader.stream`` fed by
``Transport.stream_page``) against the page read whole (``SeriesReader.read_rows``, itself
proven equal to the old reader in test_tokens_fastpath.py): the same rows, values, index and
list reuse whatever the pieces, the same errors, and a body that fails mid-way leaving the
source as it was."""

from __future__ import annotations

import asyncio
import functools
import gzip
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest

from aifinops.model.inputs import TokenColumns, token_observations
from aifinops.offload import run_cpu
from aifinops.settings import TokenSourceSettings
from aifinops.sources import promtext, transport
from aifinops.sources.base import SourceError, get_bytes
from aifinops.sources.promtext import SeriesReader
from aifinops.sources.tokens import TokenSource
from tests.sources.test_tokens_fastpath import (
    AWKWARD_BAD,
    AWKWARD_PAGES,
    BAD_PAGES,
    GOOD,
    PRESET_LABELS,
    Entry,
    Fleet,
    demo_pages,
    make_source,
    names_for,
    page_of,
)

WHOLE = 0  # a piece size: the page in one piece

NOT_UTF8 = [
    GOOD.encode().replace(b"other_metric", b"other_\xff"),
    b"\xc3" + GOOD.encode(),
    GOOD.encode()[:-1] + b"\xe2\x82",
    GOOD.encode() + b'litellm_input_tokens_metric_total{model="\xe2\x82",team_alias="z"} 1\n',
]


@pytest.fixture(params=[1 << 18, 300, 64], ids=["default-span", "small-span", "tiny-span"])
def span(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(promtext, "READ_CHUNK_BYTES", request.param)
    return int(request.param)


def pieces(page: bytes, size: int) -> list[bytes]:
    if size == WHOLE:
        return [page]
    return [page[at : at + size] for at in range(0, len(page), size)] or [b""]


def sizes_for(span: int, page: bytes) -> list[int]:
    # Tiny pieces copy the carried span each time: 1 byte on small pages only, 7 with a small
    # span or page (the transport hands over a MiB at a time).
    tiny = [1] if len(page) < 2000 else []
    tiny += [7] if span < 1000 or len(page) < 20_000 else [4093]
    return [*tiny, 64 * 1024, WHOLE]


def state(reader: SeriesReader[Entry]) -> tuple[Any, ...]:
    return (sorted(reader._entries), reader._dirty, reader._reading is None)


def outcome(read: Callable[[], tuple[list[Entry], list[float]]]) -> tuple[Any, Any]:
    try:
        entries, values = read()
    except ValueError as exc:
        return str(exc), None
    return repr([(e.name, e.labels, v) for e, v in zip(entries, values, strict=True)]), entries


def streamed(reader: SeriesReader[Entry], page: bytes, size: int) -> Callable[..., Any]:
    def read() -> tuple[list[Entry], list[float]]:
        stream = reader.stream(Entry)
        for piece in pieces(page, size):
            stream.feed(piece)
        return stream.finish()

    return read


def compare(pages: Sequence[bytes], span: int, wanted: frozenset[str]) -> int:
    """Each page read whole by one reader and in pieces by others, page after page: the
    same rows (or error), the same list handed back again where the whole read does, the
    same index. Returns the number of good reads."""
    sizes = sorted({s for page in pages for s in sizes_for(span, page)})
    whole: SeriesReader[Entry] = SeriesReader(wanted)
    others = {size: SeriesReader[Entry](wanted) for size in sizes}
    last: dict[int, Any] = {}
    good = 0
    for page in pages:
        want, entries = outcome(functools.partial(whole.read_rows, page, Entry))
        reused = entries is not None and entries is last.get(-1)
        if entries is not None:
            last[-1] = entries
            good += 1
        for size, reader in others.items():
            if size not in sizes_for(span, page):
                size = WHOLE
            got, got_entries = outcome(streamed(reader, page, size))
            assert got == want, (size, page[:80])
            if got_entries is not None:
                assert (got_entries is last.get(id(reader))) == reused, size
                last[id(reader)] = got_entries
            assert state(reader) == state(whole), size
    return good


def crlf(page: bytes) -> bytes:
    return page.replace(b"\n", b"\r\n")


def test_pieces_equal_the_whole_page_on_awkward_and_bad_pages(span: int) -> None:
    awkward = [*AWKWARD_PAGES, *AWKWARD_BAD, *reversed(AWKWARD_PAGES), AWKWARD_PAGES[0]]
    bad = [GOOD.encode(), *(p.encode() for p in BAD_PAGES), GOOD.encode(), *NOT_UTF8]
    steady = [page_of(50, step) for step in range(3)] + [page_of(50, 3, drop=7), page_of(50, 4)]
    pages = [*awkward, *(p.replace(b" 5", b" 50") for p in awkward), *bad, *steady]
    pages += [crlf(p) for p in steady] + [crlf(GOOD.encode())[:-1], crlf(GOOD.encode())]
    pages += [b"", GOOD.encode(), b"\n", b"\r", GOOD.encode() + b"\r"]
    assert compare(pages, span, frozenset({"m", "litellm_input_tokens_metric_total"})) > 20


# Not the tiny span: the small one already cuts spans inside the demo's lines.
@pytest.mark.parametrize("span", [1 << 18, 300], ids=["default-span", "small-span"], indirect=True)
@pytest.mark.parametrize("preset", ["litellm", "vllm"])
def test_pieces_equal_the_whole_page_on_the_demo_pages(preset: str, span: int) -> None:
    source = make_source(preset, random.Random(3))
    pages = demo_pages(preset)
    assert compare(pages, span, source.mapping.wanted()) == len(pages)


def test_a_read_left_unfinished_leaves_the_reader_as_it_was(span: int) -> None:
    """A body that broke off: its read is never finished, and the next read is the one a
    reader that never saw it makes (the same list handed back, the same index)."""
    wanted = frozenset({"m"})
    clean: SeriesReader[Entry] = SeriesReader(wanted)
    broken: SeriesReader[Entry] = SeriesReader(wanted)
    first = page_of(3000, 0)
    new_series = page_of(12000, 1)  # 9000 series the broken read learns, then drops
    a, _ = clean.read_rows(first, Entry)
    b, _ = broken.read_rows(first, Entry)
    stream = broken.stream(Entry)
    stream.feed(new_series[: len(new_series) * 3 // 4])
    assert len(broken._entries) > len(clean._entries)  # learned, not yet forgotten
    a2, va = clean.read_rows(page_of(3000, 2), Entry)
    b2, vb = streamed(broken, page_of(3000, 2), 4093)()
    assert a2 is a and b2 is b and va == vb
    assert state(broken) == state(clean)


# --- through the transport: pages arriving in pieces ---------------------------------------


class Pieces(httpx.AsyncByteStream):
    """A body arriving ``size`` bytes at a time, then perhaps breaking off (``fail``)."""

    def __init__(self, body: bytes, size: int, fail: Exception | None = None) -> None:
        self._body, self._size, self._fail = body, size, fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in pieces(self._body, self._size):
            await asyncio.sleep(0)
            yield piece
        if isinstance(self._fail, Hang):
            await asyncio.Event().wait()  # until the fetch is cancelled
        if self._fail is not None:
            raise self._fail


class Hang(Exception):
    """Not raised: the body stops coming (the fetch is cancelled from outside)."""


class Upstream:
    """Serves each URL's current body, whole (in memory) or streamed in pieces."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.bodies: dict[str, bytes] = {}
        self.headers: dict[str, str] = {}
        self.fail: Exception | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = self.bodies[str(request.url)]
        if self.size is None:
            return httpx.Response(200, content=body)
        stream = Pieces(body, self.size, self.fail)
        return httpx.Response(200, headers=self.headers, stream=stream)


async def fetch(source: TokenSource, upstream: Upstream, bodies: Sequence[bytes]) -> Any:
    for target, body in zip(source._settings.scrape_targets, bodies, strict=True):
        upstream.bodies[target.url] = body
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler)) as client:
        try:
            return await source.fetch(client)
        except SourceError as exc:
            return exc.reason, str(exc)


def table_of(read: Any) -> Any:
    return read[0].table if read and isinstance(read[0], TokenColumns) else None


@pytest.mark.parametrize("size", [1000, 1 << 16])
@pytest.mark.parametrize("piece", [1, 4096, transport.STREAM_PIECE_BYTES])
@pytest.mark.parametrize("preset", ["litellm", "vllm"])
async def test_a_streamed_scrape_equals_the_whole_page_read(
    preset: str, size: int, piece: int, span: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same observations, and the same table object kept while the series stay, as the
    page read whole, refresh after refresh (random fleets, the demo's pages, bad pages)."""
    monkeypatch.setattr(transport, "STREAM_PIECE_BYTES", piece)
    rng = random.Random(f"stream-{preset}-{size}-{piece}")
    whole, pieced = make_source(preset, random.Random(7)), make_source(preset, random.Random(7))
    fleets = [
        Fleet(rng, names_for(whole, rng), PRESET_LABELS[preset])
        for _ in whole._settings.scrape_targets
    ]
    rounds: list[list[bytes]] = []
    for _ in range(5):
        rounds.append([f.page() for f in fleets])
        for f in fleets:
            f.step()
    rounds += [[page] * len(fleets) for page in demo_pages(preset)[-6:]]
    rounds.insert(3, [b'x{a="1"} 1\n' + rounds[2][0] + b"\xff"] * len(fleets))
    whole_up, pieced_up = Upstream(None), Upstream(size)
    kept = 0
    prev: tuple[Any, Any] = (None, None)
    for bodies in rounds:
        want = await fetch(whole, whole_up, bodies)
        got = await fetch(pieced, pieced_up, bodies)
        if isinstance(want, tuple) and isinstance(want[0], str):
            assert got == want  # the same reason and message
            continue
        assert token_observations(got) == token_observations(want)
        assert whole.target_status() == pieced.target_status()
        same = table_of(want) is prev[0]
        assert (table_of(got) is prev[1]) == same
        kept += same
        prev = (table_of(want), table_of(got))
    assert kept >= 2  # steady rounds did keep their table


FAILURES: list[tuple[str, Callable[[Upstream], None]]] = [
    ("truncated", lambda up: setattr(up, "fail", httpx.RemoteProtocolError("peer closed"))),
    ("timeout", lambda up: setattr(up, "fail", httpx.ReadTimeout("read timed out"))),
    ("cut-gzip", lambda up: up.headers.update({"content-encoding": "gzip"})),
    ("too-large", lambda up: None),
    ("cancelled", lambda up: setattr(up, "fail", Hang())),
]


@pytest.mark.parametrize("failure", [name for name, _ in FAILURES])
async def test_a_body_that_fails_mid_way_keeps_the_last_good_read(
    failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a page broke off half-way through its parse (a peer that hangs up, a read
    that times out, a gzip stream cut off, a body past the cap, a fetch cancelled from
    outside), the source fails with the reason the whole-body read gave, keeps its last good
    read, and its next read is the one of a source that never saw the failure: the same
    observations, the same table object as before."""
    monkeypatch.setattr(transport, "STREAM_PIECE_BYTES", 2048)
    monkeypatch.setattr(promtext, "READ_CHUNK_BYTES", 4096)
    settings = {
        "name": "t",
        "preset": "litellm",
        "mode": "scrape",
        "scrape_targets": [{"url": "http://up0/metrics"}],
        "max_response_bytes": 40_000,
    }
    clean = TokenSource(TokenSourceSettings.model_validate(settings), run=run_cpu)
    broken = TokenSource(TokenSourceSettings.model_validate(settings), run=run_cpu)
    line = 'litellm_input_tokens_metric_total{model="m%d",team_alias="t%d"} %d.0\n'
    first = "".join(line % (i % 7, i, i * 10) for i in range(300)).encode()
    grown = first + "".join(line % (9, i, 5) for i in range(300, 700)).encode()
    later = "".join(line % (i % 7, i, i * 10 + 3) for i in range(300)).encode()
    up_clean, up_broken = Upstream(997), Upstream(997)
    a = await fetch(clean, up_clean, [first])
    b = await fetch(broken, up_broken, [first])
    good = broken._targets[0].good
    breaking = dict(FAILURES)[failure]
    breaking(up_broken)
    body = {"cut-gzip": gzip.compress(grown)[:-40], "too-large": grown}.get(
        failure, grown[: len(grown) * 2 // 3]
    )
    assert len(first) < 40_000 < len(grown)
    assert len(body) < 40_000 or failure == "too-large"
    if failure == "cancelled":
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fetch(broken, up_broken, [body]), 0.5)
    else:
        failed = await fetch(broken, up_broken, [body])
        # The reason the page's whole-body read gives for the same response.
        async with httpx.AsyncClient(transport=httpx.MockTransport(up_broken.handler)) as client:
            with pytest.raises(SourceError) as before:
                await get_bytes(client, "http://up0/metrics", timeout=5, max_bytes=40_000)
        assert failed[0] == before.value.reason
        assert not broken._targets[0].up
    assert broken._targets[0].good is good
    unfinished = broken._readers[0]._reading
    assert unfinished is not None and unfinished.learned  # it had parsed part of the page
    up_broken.fail, up_broken.headers = None, {}
    a2 = await fetch(clean, up_clean, [later])
    b2 = await fetch(broken, up_broken, [later])
    assert token_observations(b2) == token_observations(a2) != token_observations(a)
    assert (table_of(a2) is table_of(a)) and (table_of(b2) is table_of(b))
    assert state(broken._readers[0]) == state(clean._readers[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_first", [True, False])
async def test_caps_and_reasons_are_those_of_the_whole_body_read(bad_first: bool) -> None:
    """A page over max_response_bytes is too_large even when a line of it does not parse
    (the body's failure comes first, as when the page was read before its parse); a gzip
    bomb is cut at the cap."""
    settings = {
        "name": "t",
        "preset": "litellm",
        "mode": "scrape",
        "scrape_targets": [{"url": "http://up0/metrics"}],
        "max_response_bytes": 50_000,
    }
    source = TokenSource(TokenSourceSettings.model_validate(settings), run=run_cpu)
    line = b'litellm_input_tokens_metric_total{model="m",team_alias="a%d"} 1\n'
    page = b"".join(line % i for i in range(2000))
    if bad_first:
        page = b'litellm_input_tokens_metric_total{model="m" 1\n' + page
    up = Upstream(1000)
    reason, message = await fetch(source, up, [page])
    assert reason == "too_large" and "50000-byte cap" in message
    up.headers = {"content-encoding": "gzip"}
    reason, _ = await fetch(source, up, [gzip.compress(page * 50)])
    assert reason == "too_large"
    assert source._targets[0].good is None
    # Within the cap: the bad line is the reason.
    up.headers = {}
    part = page[:30_000].rsplit(b"\n", 1)[0] + b"\n"
    got = await fetch(source, up, [part])
    if bad_first:
        assert got[0] == "parse" and "line 1:" in got[1]
    else:
        assert len(token_observations(got)) == part.count(b"\n") > 400
