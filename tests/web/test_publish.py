"""The engine-to-front channel (``web/publish.py``): a publication carries the demo's page and
prepared answers byte for byte; the front's gzip-with-a-tail is the inline one's (the oracle:
``Exposition.gzipped_with``) and its plain page, inflated in pieces, the engine's; malformed
messages are refused; the engine's link keeps only the latest snapshot and hears what the
front answered."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import random
import socket
import struct
import time
import zlib
from typing import Any

import pytest

from aifinops.exposition.render import Exposition, gzip_member
from aifinops.refresh import Snapshot
from aifinops.web.api import PreparedAnswers
from aifinops.web.app import REFRESHER
from aifinops.web.front import Engine
from aifinops.web.publish import (
    MAGIC,
    PREFIX,
    EngineLink,
    ProtocolError,
    Publication,
    SourceLine,
    decode_publication,
    frame,
    is_page_member,
    publish_frame,
    read_message,
    wanted_frame,
)
from tests.web.conftest import start_demo_app

ASKED = (
    "/api/v1/summary",
    "/api/v1/budgets",
    "/api/v1/chargeback?format=focus",
    "/api/v1/chargeback",
)


def _reader(*pieces: bytes | memoryview, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 16)
    for piece in pieces:
        reader.feed_data(bytes(piece))
    if eof:
        reader.feed_eof()
    return reader


async def _roundtrip(snap: Snapshot, **kw: Any) -> Publication:
    pieces = publish_frame(snap, stalled=kw.get("stalled", False), stall_seconds=90.0, seq=7)
    header, blobs = await read_message(_reader(*pieces))
    return decode_publication(header, blobs)


async def test_a_publication_carries_the_demo_page_and_answers(aiohttp_client: Any) -> None:
    demo = await start_demo_app(aiohttp_client)
    try:
        await demo.refresh()
        inline = {}
        for path in ASKED:  # asked once: prepared with every refresh after
            resp = await demo.client.get(path)
            assert resp.status == 200, path
        demo.clock.now += 60
        await demo.refresh()
        for path in ASKED:
            resp = await demo.client.get(path)
            inline[path] = (await resp.read(), resp.headers["Content-Type"])
        snap = demo.client.app[REFRESHER].snapshot
        assert isinstance(snap.prepared, PreparedAnswers)
        pub = await _roundtrip(snap)
    finally:
        await demo.upstreams.close()
    assert bytes(pub.gzipped) == snap.exposition.gzipped
    assert b"".join(pub.iter_plain()) == snap.exposition.plain
    assert pub.plain_size == len(snap.exposition.plain)
    assert set(pub.answers) == set(snap.prepared.answers) >= set(ASKED)
    for path, (body, content_type) in inline.items():
        answer = pub.answers[path]
        assert bytes(answer.body) == body, path
        assert content_type.startswith(answer.content_type)
    focus = pub.answers["/api/v1/chargeback?format=focus"]
    assert dict(focus.headers)["Content-Disposition"].startswith("attachment")
    assert pub.ready and not pub.stalled and pub.stall_seconds == 90.0 and pub.seq == 7
    assert snap.status is not None and pub.sources is not None
    assert [s.source for s in pub.sources] == [s.name for s in snap.status.sources]
    assert all(s.up for s in pub.sources)
    # gzip with a scrape-time tail: the inline page's bytes exactly, one member
    tail = b"process_open_fds 12\n"
    gz = b"".join(pub.gzip_pieces(tail))
    assert gz == snap.exposition.gzipped_with(tail)
    assert _one_member(gz) == snap.exposition.plain + tail


def _one_member(gz: bytes) -> bytes:
    """What a gzip reader reads of ``gz``, asserting it is exactly one whole member."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflate.decompress(gz) + inflate.flush()
    assert inflate.eof and not inflate.unused_data
    return out


async def test_without_prepared_answers_or_status() -> None:
    page = Exposition.from_bytes(b"# a page\nx 1\n")
    snap = Snapshot(report=None, finance=None, status=None, exposition=page, ready=False)
    pub = await _roundtrip(snap, stalled=True)
    assert pub.answers == {} and pub.sources is None and pub.stalled and not pub.ready
    assert b"".join(pub.iter_plain()) == page.plain


# Awkward pages: empty, one line without its newline, bytes that are not text, and random
# lines far longer than a piece; tails: empty, one byte, larger than a write.
_RNG = random.Random(16)
PAGES = [
    b"",
    b"x 1",
    bytes(range(256)) * 3,
    b"".join(
        b'm{a="%d"} %r\n' % (_RNG.randrange(1 << 30), _RNG.random())
        + b"#" * _RNG.randrange(0, 9000)
        + b"\n"
        for _ in range(60)
    ),
]
TAILS = [b"", b"\n", b"process_open_fds 7\n" * 9000]


@pytest.mark.parametrize("level", [1, 6, 9])
@pytest.mark.parametrize("page", PAGES, ids=["empty", "no-newline", "binary", "long-lines"])
def test_the_fronts_page_pieces_equal_the_inline_page(page: bytes, level: int) -> None:
    """The gzip pieces (a view of the page, then the tail's blocks and trailer) are
    ``Exposition.gzipped_with``'s bytes, one member; the plain page inflated in pieces of
    any size is the page, and its size is known before it is inflated."""
    exposition = Exposition.from_bytes(page, level)
    pub = Publication(exposition.gzipped, {}, True, False, 0.0, None)
    for tail in TAILS:
        pieces = pub.gzip_pieces(tail)
        assert b"".join(pieces) == exposition.gzipped_with(tail)
        assert _one_member(b"".join(pieces)) == page + tail
    assert pub.plain_size == len(page)
    for size in (1, 7, 1000, 1 << 17):
        if size * 2000 < len(page):
            continue  # a byte at a time: the small pages only
        got = list(pub.iter_plain(size))
        assert b"".join(got) == page and all(0 < len(p) <= size for p in got)


async def test_the_page_is_served_from_the_publications_buffer_not_copied() -> None:
    """The first gzip piece is a view into the buffer the message was read into: a scrape
    copies nothing of the page (the tail's blocks are its own)."""
    page = Exposition.from_bytes(PAGES[3])
    snap = Snapshot(report=None, finance=None, status=None, exposition=page, ready=True)
    header, blobs = await read_message(
        _reader(*publish_frame(snap, stalled=False, stall_seconds=1, seq=1))
    )
    pub = decode_publication(header, blobs)
    view, rest = pub.gzip_pieces(b"tail 1\n")
    assert isinstance(view, memoryview) and view.obj is blobs[0].obj
    assert len(view) == len(page.gzipped) - 10 and len(rest) < 100


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda gz: gz[:-1], id="truncated"),
        pytest.param(lambda gz: gz[:-5] + bytes([gz[-5] ^ 1]) + gz[-4:], id="bad-crc"),
        pytest.param(lambda gz: gz[:-4] + struct.pack("<L", 3), id="bad-size"),
        pytest.param(lambda gz: gz[:30] + bytes([gz[30] ^ 0xFF]) + gz[31:], id="bad-data"),
        pytest.param(lambda gz: gz + gz, id="two-members"),
    ],
)
def test_a_damaged_page_is_never_served_as_whole(cut: Any) -> None:
    """A member that is not whole (cut, its CRC, size or data changed, something after it)
    makes the plain page's inflation fail instead of ending as if it were complete."""
    gz = gzip_member(PAGES[3])
    pub = Publication(cut(gz), {}, True, False, 0.0, None)
    with pytest.raises(zlib.error):
        b"".join(pub.iter_plain(1000))


@pytest.mark.parametrize(
    "page",
    [
        b"",
        b"# a plain page\nx 1\n",
        gzip.compress(b"x 1\n"),  # a member without the empty final block before its trailer
        gzip_member(b"x 1\n")[:-3],
        b"\x1f\x8b\x08\x08" + gzip_member(b"x 1\n")[4:],  # a file name in the header
    ],
    ids=["empty", "plain", "no-final-block", "cut", "header-flags"],
)
async def test_a_page_that_is_not_a_prepared_member_is_refused(page: bytes) -> None:
    assert not is_page_member(page)
    header = {**GOOD, "blobs": [len(page)]}
    header, blobs = await read_message(_reader(_message(header, page)))
    with pytest.raises(ProtocolError, match="not a gzip member"):
        decode_publication(header, blobs)


def _message(header: dict[str, Any], blob: bytes = b"", magic: bytes = MAGIC) -> bytes:
    head = json.dumps(header).encode()
    return PREFIX.pack(magic, len(head), len(blob)) + head + blob


MEMBER = gzip_member(b"x 1\n")
GOOD = {
    "kind": "publish",
    "seq": 1,
    "ready": True,
    "stalled": False,
    "stall_seconds": 90,
    "sources": [],
    "answers": [],
    "blobs": [len(MEMBER)],
}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_message(GOOD, b"abcd", magic=b"HTTP"), "bad magic"),
        (PREFIX.pack(MAGIC, 8, 0) + b"not json", "not JSON"),
        (PREFIX.pack(MAGIC, 2, 0) + b"[]", "an object with a kind"),
        (_message({**GOOD, "blobs": [2, 3]}, b"abcd"), "do not add up"),
        (_message({**GOOD, "blobs": [-1, 5]}, b"abcd"), "do not add up"),
        (_message({**GOOD, "blobs": "4"}, b"abcd"), "do not add up"),
        (PREFIX.pack(MAGIC, 1 << 30, 0), "too large"),
        (PREFIX.pack(MAGIC, 10, 0xFFFFFFFF), "too large"),
    ],
)
async def test_malformed_messages_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        await read_message(_reader(raw))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"answers": [{"path": "/api/v1/summary"}]}, "one blob per answer"),
        (
            {
                "answers": [
                    {"path": "/etc/passwd", "content_type": "x", "charset": None, "headers": []}
                ],
                "blobs": [len(MEMBER), 0],
            },
            "not a preparable request",
        ),
        ({"ready": None, "stall_seconds": "soon"}, "expected a number"),
        ({"sources": [{"source": "dcgm"}]}, "malformed"),
        ({"seq": None}, "malformed"),
    ],
)
async def test_malformed_publications_are_refused(change: dict[str, Any], why: str) -> None:
    header = {**GOOD, **change}
    sizes = header["blobs"]
    blob = MEMBER + b"x" * (sum(sizes) - len(MEMBER))
    header, blobs = await read_message(_reader(_message(header, blob)))
    with pytest.raises(ProtocolError, match=why):
        decode_publication(header, blobs)


async def test_a_cut_off_message_is_the_end_of_the_stream() -> None:
    pieces = frame({"kind": "publish"}, [b"a" * 100])
    whole = b"".join(bytes(p) for p in pieces)
    for cut in (0, 5, len(whole) - 1):
        with pytest.raises(asyncio.IncompleteReadError):
            await read_message(_reader(whole[:cut]))


async def test_the_link_sends_the_latest_snapshot_and_hears_what_was_asked() -> None:
    ours, theirs = socket.socketpair()
    link = EngineLink(*await asyncio.open_connection(sock=ours))
    reader, writer = await asyncio.open_connection(sock=theirs)
    link.status = lambda: (True, 42.0)
    snaps = [
        Snapshot(None, None, None, Exposition.from_bytes(f"x {i}\n".encode()), ready=i > 0)
        for i in range(3)
    ]
    # Two published before the writer runs: only the later goes out.
    link.publish(snaps[0])
    link.publish(snaps[1])
    link.start()
    header, blobs = await asyncio.wait_for(read_message(reader), 5)
    pub = decode_publication(header, blobs)
    assert b"".join(pub.iter_plain()) == b"x 1\n" and pub.stalled and pub.stall_seconds == 42.0
    link.publish(snaps[2])
    header, blobs = await asyncio.wait_for(read_message(reader), 5)
    assert b"".join(decode_publication(header, blobs).iter_plain()) == b"x 2\n"
    assert decode_publication(header, blobs).seq == pub.seq + 1
    # the front's wanted requests: preparable ones only, kept for the prepare window
    for piece in wanted_frame(["/api/v1/summary", "/api/v1/roi/calculate", "/metrics"]):
        writer.write(piece)
    await writer.drain()
    for _ in range(100):
        if link.wanted():
            break
        await asyncio.sleep(0.01)
    assert link.wanted() == frozenset({"/api/v1/summary"})
    link._monotonic = lambda: time.monotonic() + 601.0
    assert link.wanted() == frozenset()
    # the front's end closes: the link says so
    writer.close()
    await asyncio.wait_for(link.closed.wait(), 5)
    await link.close()


def _publication(**kw: Any) -> Publication:
    base: dict[str, Any] = dict(
        gzipped=gzip_member(b""),
        answers={},
        ready=True,
        stalled=False,
        stall_seconds=90.0,
        sources=(),
        received_at=time.monotonic(),
    )
    return Publication(**{**base, **kw})


def test_the_front_says_stalled_when_the_engine_is_quiet_for_its_window() -> None:
    engine = Engine([])
    try:
        assert engine.stalled()  # nothing published yet
        engine._accept(_publication())
        assert not engine.stalled()
        engine._accept(_publication(stalled=True))
        assert engine.stalled()
        engine._accept(_publication(received_at=time.monotonic() - 91.0))
        assert engine.stalled()
        # A new engine's first page (before its first refresh: no figures, no sources)
        # does not replace a page that had them; its readiness does.
        good = _publication(gzipped=gzip_member(b"figures"))
        engine._accept(good)
        engine._accept(_publication(gzipped=gzip_member(b"empty"), ready=False, sources=None))
        assert engine.page is good and engine.latest is not None and not engine.latest.ready
        # Its first refresh's page does, ready or not: with every upstream down it says so,
        # where the old page would go on saying they were up, with its figures, for good.
        down = SourceLine("opencost", up=False, stale=False, error="connect", age_seconds=None)
        after = _publication(gzipped=gzip_member(b"down"), ready=False, sources=(down,))
        engine._accept(after)
        assert engine.page is after and engine.latest is after
    finally:
        engine._dir.rmdir()


def test_message_sizes_are_big_endian_u32() -> None:
    (head, *_rest) = frame({"kind": "wanted"}, [b"abc"])
    magic, head_len, total = struct.unpack("!4sII", bytes(head)[:12])
    assert magic == MAGIC and total == 3 and head_len == len(bytes(head)) - 12


class _Link:
    """What the app needs of an EngineLink: publish() and wanted()."""

    def __init__(self) -> None:
        self.published: list[Snapshot] = []
        self.status: Any = None

    def publish(self, snap: Snapshot) -> None:
        self.published.append(snap)

    def wanted(self) -> frozenset[str]:
        return frozenset({"/api/v1/budgets"})


async def test_the_engine_app_publishes_each_swap_and_prepares_what_the_front_asked(
    aiohttp_client: Any,
) -> None:
    from aifinops.demo.cluster import ClusterSpec, SimCluster
    from aifinops.demo.upstreams import start_upstreams
    from aifinops.settings import settings_from_mapping
    from aifinops.web.app import create_app
    from aifinops.web.security import WEB_SECURITY
    from tests.web.conftest import Clock

    clock = Clock()
    upstreams = await start_upstreams(SimCluster(ClusterSpec.demo()), clock=clock)
    try:
        config = upstreams.exporter_config()
        push = {"enabled": True, "rate_limit_per_second": 0.001, "rate_limit_burst": 1}
        config["tokens"] = {**config.get("tokens", {}), "push": push}
        settings = settings_from_mapping(config)
        link = _Link()
        app = create_app(settings, clock=clock, run_loop=False, link=link)  # type: ignore[arg-type]
        client = await aiohttp_client(app)
        refresher = app[REFRESHER]
        assert link.published and link.published[-1] is refresher.snapshot  # at start-up
        assert link.status() == (refresher.stalled(), refresher.stall_seconds())
        await refresher.refresh_once()
        assert link.published[-1] is refresher.snapshot
        prepared = refresher.snapshot.prepared
        # nobody asked this process: the front did
        assert isinstance(prepared, PreparedAnswers) and set(prepared.answers) == {
            "/api/v1/budgets"
        }
        refresher.rerender()
        assert link.published[-1] is refresher.snapshot
        # TLS and basic auth are the front's; the client address is the one it names
        assert WEB_SECURITY not in app
        batch = {"records": [{"tenant": "search", "model": "gpt-4o", "input_tokens": 5}]}
        statuses = []
        for who in ("10.1.2.3", "10.1.2.3", "10.9.9.9"):
            resp = await client.post(
                "/api/v1/usage", json=batch, headers={"X-AIFinOps-Front-Client": who}
            )
            statuses.append(resp.status)
        assert statuses == [202, 429, 202]
    finally:
        await upstreams.close()


async def test_the_front_passes_on_what_it_cannot_answer(
    aiohttp_client: Any, tmp_path: Any
) -> None:
    """In one process: the front app (``create_front``) before an engine app on a unix
    socket; a prepared answer from the publication, the rest through the socket, 503 naming
    the engine when nothing answers there."""
    from aiohttp import web

    from aifinops.demo.cluster import ClusterSpec, SimCluster
    from aifinops.demo.upstreams import start_upstreams
    from aifinops.settings import settings_from_mapping
    from aifinops.web.app import create_app
    from aifinops.web.front import create_front
    from tests.web.conftest import Clock

    clock = Clock()
    upstreams = await start_upstreams(SimCluster(ClusterSpec.demo()), clock=clock)
    runner = None
    try:
        settings = settings_from_mapping(upstreams.exporter_config())
        link = _Link()
        app = create_app(settings, clock=clock, run_loop=False, link=link)  # type: ignore[arg-type]
        runner = web.AppRunner(app)
        await runner.setup()
        path = tmp_path / "engine.sock"
        await web.UnixSite(runner, str(path)).start()
        await app[REFRESHER].refresh_once()
        engine = Engine([], socket_path=path)
        engine.up = True
        engine._accept(await _roundtrip(app[REFRESHER].snapshot))
        front = await aiohttp_client(create_front(settings_from_mapping({}), engine))

        budgets = await front.get("/api/v1/budgets")  # prepared (the link asked for it)
        assert budgets.status == 200 and "budgets" in await budgets.json()
        doc = await front.get("/api/v1/openapi.json")  # passed on
        assert doc.status == 200 and (await doc.json())["openapi"].startswith("3.")
        assert "Date" in doc.headers and doc.headers.getall("Server") == [doc.headers["Server"]]
        bad = await front.get("/api/v1/summary?nope=1")  # the engine's own 400
        assert bad.status == 400 and (await bad.json())["error"]["field"] == "nope"
        missing = await front.get("/api/v1/nothing")
        assert missing.status == 404
        roi = await front.post("/api/v1/roi/calculate", data=b"not json")
        assert roi.status == 400
        metrics = await front.get("/metrics")
        assert metrics.status == 200
        assert (await metrics.read()).startswith(app[REFRESHER].snapshot.exposition.plain)

        await runner.cleanup()
        runner = None
        down = await front.get("/api/v1/openapi.json")
        assert down.status == 503
        assert "refresh engine" in (await down.json())["error"]["message"]
        assert (await front.get("/api/v1/budgets")).status == 200  # still from the page
        await engine.stop()
    finally:
        if runner is not None:
            await runner.cleanup()
        await upstreams.close()


async def test_the_front_serves_a_publication_received_in_pieces_byte_for_byte(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's page and answers taken off the channel in small, uneven pieces (into one
    mapped buffer) and written out a chunk at a time (the plain page inflated in small
    steps): what the front serves is the engine's page plus the scrape-time tail, byte for
    byte, plain and gzip, with its length."""
    import aifinops.web.front as front_module
    import aifinops.web.publish as publish_module
    from aifinops.exposition.render import render
    from aifinops.settings import settings_from_mapping
    from aifinops.web.front import create_front

    demo = await start_demo_app(aiohttp_client)
    try:
        await demo.refresh()
        for path in ASKED:
            assert (await demo.client.get(path)).status == 200, path
        demo.clock.now += 60
        await demo.refresh()
        app = demo.client.app
        snap = app[REFRESHER].snapshot
    finally:
        await demo.upstreams.close()
    assert isinstance(snap.prepared, PreparedAnswers)
    plain = snap.exposition.plain
    small = 1021  # many chunks of the demo's page, none aligned with a blob's edge
    assert len(plain) > 20 * small
    monkeypatch.setattr(publish_module, "CHUNK", small)
    monkeypatch.setattr(publish_module, "_INFLATE_STEP", 997)
    monkeypatch.setattr(front_module, "WRITE_CHUNK", small)
    whole = b"".join(bytes(p) for p in publish_frame(snap, stalled=False, stall_seconds=9, seq=3))
    reader = asyncio.StreamReader(limit=1 << 12)
    for at in range(0, len(whole), 1000):
        reader.feed_data(whole[at : at + 1000])
    reader.feed_eof()
    header, blobs = await read_message(reader)
    pub = decode_publication(header, blobs)
    del header, blobs

    engine = Engine([])
    engine._accept(pub)
    fixed = b"# TYPE process_open_fds gauge\nprocess_open_fds 12\n"
    monkeypatch.setattr(front_module, "process_exposition", lambda: fixed)
    tail = fixed + render(engine.families())
    front = await aiohttp_client(create_front(settings_from_mapping({}), engine))

    resp = await front.get("/metrics", headers={"Accept-Encoding": "identity"})
    body = await resp.read()
    assert resp.status == 200 and "Content-Encoding" not in resp.headers
    assert body == plain + tail
    assert resp.headers["Content-Length"] == str(len(plain) + len(tail))
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    zipped = await front.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert await zipped.read() == plain + tail
    raw = await front.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert _one_member(await raw.read()) == plain + tail
    head = await front.head("/metrics", headers={"Accept-Encoding": "identity"})
    assert head.status == 200 and await head.read() == b""
    assert head.headers["Content-Length"] == str(len(plain) + len(tail))
    for path in ASKED:
        answer = await front.get(path)
        assert await answer.read() == snap.prepared.answers[path].body, path
    # The gzip scrapes' buffer is reused: a smaller page after a larger one sends its own
    # bytes only, never the rest of what the buffer held.
    assert 1 <= len(engine.gzip_buffers) <= front_module.GZIP_BUFFERS
    small_page = b"# TYPE x gauge\nx 1\n"
    engine.page = dataclasses.replace(pub, gzipped=gzip_member(small_page))
    again = await front.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert _one_member(await again.read()) == small_page + tail
    assert len(engine.gzip_buffers) <= front_module.GZIP_BUFFERS
    await engine.stop()
