"""The channel between the refresh engine and the front (``server.refresh_process: separate``).

The engine (today's app, ``web/app.py``, serving on a private unix socket) runs the refresh
loop; the front (``web/front.py``) owns the listen sockets and answers ``/metrics``,
``/healthz``, ``/readyz``, ``/`` and the prepared API answers from what the engine last
published, so a refresh never holds the interpreter lock of the process that serves.

After every snapshot swap the engine writes one **publish** message on a socketpair; the
front writes **wanted** messages back (the preparable API requests it answered, so the engine
keeps preparing them). A message is::

    "AFP1" | header length (u32, big-endian) | blob length (u32) | header | blob

``header`` is a JSON object with ``kind``; ``blob`` is the raw bytes its ``blobs`` list cuts
into consecutive pieces (a publish: the page's gzip member, then each prepared answer's
body), so the megabytes of the page are never encoded or escaped. The reader takes a message
in chunks into one buffer (:func:`read_message`) and the front keeps views into it: per
publication, one buffer, never a copy.

Only the gzip member travels: Prometheus asks for gzip, and the front serves the rare plain
scrape by inflating it a piece at a time (:meth:`Publication.iter_plain`), so neither the
channel nor the front carries the plain page (12 times the gzip's size).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from aifinops.exposition.render import FINAL_EMPTY_BLOCK, gzip_member
from aifinops.web.gate import PREPARABLE, PREPARE_WINDOW_S, PreparedAnswers

if TYPE_CHECKING:  # the front imports this module; the refresh loop is the engine's
    from aifinops.refresh import Snapshot

log = structlog.get_logger("aifinops.web.publish")

MAGIC = b"AFP1"
PREFIX = struct.Struct("!4sII")
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_BLOB_BYTES = 1024 * 1024 * 1024
CHUNK = 1024 * 1024
"""Bytes written (or read) per step on the channel: the event loop turns between steps, and
the transport never buffers more than this on top of the kernel's socket buffer."""
WRITE_CHUNK = 128 * 1024
"""Bytes per write of a response body at the front, and per piece of an inflated plain page:
below the C allocator's pinned mmap threshold (``offload.MMAP_THRESHOLD_BYTES``), so the
copies that aiohttp and the transport make of a piece (the headers joined to the first one,
what the socket did not take) reuse heap memory instead of a fresh mapping per scrape."""
_GZIP_TAIL = len(FINAL_EMPTY_BLOCK) + 8
# The 10-byte header every published member starts with (render.gzip_member and
# offload.render_and_compress: deflate, no flags; the level and OS bytes may differ).
_GZIP_MAGIC = b"\x1f\x8b\x08\x00"
_GZIP_HEADER = 10
# Compressed bytes inflated per step of a plain scrape: a step's output stays near
# WRITE_CHUNK, and what zlib keeps of its input between steps stays small.
_INFLATE_STEP = 16 * 1024
EMPTY_PAGE = gzip_member(b"")

Bytes = bytes | memoryview


ENGINE_NICE = 10
"""The engine's scheduling niceness (``__main__`` sets it): on a machine (or a pod's CPU
quota) that a refresh saturates, the kernel runs the front first when a request arrives, and
the refresh still has every cycle the front leaves idle."""
FRONT_CLIENT_HEADER = "X-AIFinOps-Front-Client"
"""The client's address, set by the front (``web/front.py``) on every request it passes to
the engine (any such header from a client is replaced): the engine's per-client limits
(``POST /api/v1/usage``) count each client, not the front as one."""


class ProtocolError(Exception):
    """A message that is not one (bad magic, sizes, header): the channel is dropped."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One prepared API answer (``web/api.py`` CachedAnswer), as the front serves it."""

    body: Bytes
    content_type: str
    charset: str | None
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SourceLine:
    """What ``/readyz`` and ``/`` show of one source."""

    source: str
    up: bool
    stale: bool
    error: str | None
    age_seconds: float | None


def is_page_member(gz: Bytes) -> bool:
    """Whether ``gz`` is a page as the engine publishes it: one gzip member with a plain
    10-byte header whose deflate data ends with an empty final block (``render.gzip_member``),
    so that a scrape-time tail can be spliced in before its trailer."""
    view = memoryview(gz)
    return (
        len(view) >= _GZIP_HEADER + _GZIP_TAIL
        and view[:4] == _GZIP_MAGIC
        and view[-_GZIP_TAIL:-8] == FINAL_EMPTY_BLOCK
    )


@dataclass(frozen=True, slots=True)
class Publication:
    """One published snapshot: the page (its gzip member, as ``Exposition.gzipped`` holds it:
    see :func:`is_page_member`), the prepared API answers by ``path_qs``, and the engine's
    readiness and watchdog state."""

    gzipped: Bytes
    answers: Mapping[str, Answer]
    ready: bool
    stalled: bool
    stall_seconds: float
    sources: tuple[SourceLine, ...] | None
    seq: int = 0
    received_at: float = field(default=0.0, compare=False)

    @property
    def plain_size(self) -> int:
        """The plain page's length (the member's ISIZE: pages are far below 4 GiB)."""
        (size,) = struct.unpack("<L", memoryview(self.gzipped)[-4:])
        return int(size)

    def gzip_pieces(self, tail: bytes) -> tuple[memoryview, bytes]:
        """The page plus ``tail`` as one gzip member, in two pieces: a view of the prepared
        header and deflate blocks (not copied: joining them copied a megabyte per scrape,
        a fresh mapping each time under the pinned mmap threshold), then ``tail``'s own
        blocks and the new trailer. The bytes are ``Exposition.gzipped_with``'s."""
        gz = memoryview(self.gzipped)
        crc, size = struct.unpack("<LL", gz[-8:])
        deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
        blocks = deflate.compress(tail) + deflate.flush()
        trailer = struct.pack("<LL", zlib.crc32(tail, crc), (size + len(tail)) & 0xFFFFFFFF)
        return gz[:-_GZIP_TAIL], blocks + trailer

    def iter_plain(self, size: int = WRITE_CHUNK) -> Iterator[bytes]:
        """The plain page, inflated from the member at most ``size`` bytes at a time (the
        page is never whole in memory). Raises ``zlib.error`` when the member is not whole
        (its CRC and length are checked at its end)."""
        gz = memoryview(self.gzipped)
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pos = 0
        while pos < len(gz) and not inflate.eof:
            data: Bytes = gz[pos : pos + _INFLATE_STEP]
            pos += len(data)
            while data and not inflate.eof:
                piece = inflate.decompress(data, size)
                if piece:
                    yield piece
                data = inflate.unconsumed_tail
        rest = inflate.flush()
        if rest:
            yield rest
        if not inflate.eof or inflate.unused_data or pos < len(gz):
            raise zlib.error("the published page is not one whole gzip member")


# --- encoding ----------------------------------------------------------------------------


def frame(header: Mapping[str, Any], blobs: Sequence[Bytes] = ()) -> list[Bytes]:
    """A message as the pieces to write, in order (the blobs as they are, not copied)."""
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}, separators=(",", ":"))
    encoded = head.encode("utf-8")
    total = sum(len(b) for b in blobs)
    if len(encoded) > MAX_HEADER_BYTES or total > MAX_BLOB_BYTES:
        raise ProtocolError(f"message too large: header {len(encoded)}, blobs {total} bytes")
    return [PREFIX.pack(MAGIC, len(encoded), total) + encoded, *blobs]


def publish_frame(snap: Snapshot, *, stalled: bool, stall_seconds: float, seq: int) -> list[Bytes]:
    """The publish message of ``snap`` (its page as the gzip member only)."""
    blobs: list[Bytes] = [snap.exposition.gzipped]
    answers = []
    prepared = snap.prepared
    if isinstance(prepared, PreparedAnswers):
        for path, answer in prepared.answers.items():
            answers.append(
                {
                    "path": path,
                    "content_type": answer.content_type,
                    "charset": answer.charset,
                    "headers": [list(h) for h in answer.headers],
                }
            )
            blobs.append(answer.body)
    sources = None
    if snap.status is not None:
        sources = [
            {
                "source": s.name,
                "up": s.up,
                "stale": s.stale,
                "error": s.last_error,
                "age": s.age_seconds,
            }
            for s in snap.status.sources
        ]
    header = {
        "kind": "publish",
        "seq": seq,
        "ready": snap.ready,
        "stalled": stalled,
        "stall_seconds": stall_seconds,
        "sources": sources,
        "answers": answers,
    }
    return frame(header, blobs)


def wanted_frame(paths: Sequence[str]) -> list[Bytes]:
    return frame({"kind": "wanted", "paths": list(paths)})


# --- decoding ----------------------------------------------------------------------------


async def read_message(reader: asyncio.StreamReader) -> tuple[dict[str, Any], list[memoryview]]:
    """The next message: its header and its blobs (views into one buffer). Raises
    ``asyncio.IncompleteReadError`` at the end of the stream (a clean one when nothing of a
    message was read) and :class:`ProtocolError` for anything malformed."""
    prefix = await reader.readexactly(PREFIX.size)
    magic, head_len, total = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad magic")
    if head_len > MAX_HEADER_BYTES or total > MAX_BLOB_BYTES:
        raise ProtocolError(f"message too large: header {head_len}, blobs {total} bytes")
    try:
        header = json.loads(await reader.readexactly(head_len))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise ProtocolError("header is not an object with a kind")
    sizes = header.get("blobs")
    if (
        not isinstance(sizes, list)
        or not all(type(n) is int and n >= 0 for n in sizes)
        or sum(sizes) != total
    ):
        raise ProtocolError("blob sizes do not add up")
    # One buffer, filled a chunk at a time: the loop serves between chunks. An anonymous map,
    # not a bytearray: unmapped when its last view goes, where glibc would keep a freed
    # heap block of this size resident (its mmap threshold rises after the first free).
    view = memoryview(mmap.mmap(-1, total) if total else bytearray())
    pos = 0
    while pos < total:
        chunk = await reader.read(min(CHUNK, total - pos))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(view[:pos]), total)
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    blobs = []
    pos = 0
    for n in sizes:
        blobs.append(view[pos : pos + n])
        pos += n
    return header, blobs


def _opt_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError("expected a string or null")


def _num(value: object) -> float:
    if type(value) in (int, float):
        return float(value)  # type: ignore[arg-type]
    raise ProtocolError("expected a number")


def decode_publication(header: Mapping[str, Any], blobs: Sequence[memoryview]) -> Publication:
    """A publish message as a :class:`Publication`; raises :class:`ProtocolError`."""
    try:
        answers_in = header["answers"]
        if len(blobs) != 1 + len(answers_in):
            raise ProtocolError("one blob per answer, after the page's")
        if not is_page_member(blobs[0]):
            raise ProtocolError("the page is not a gzip member ending in an empty final block")
        answers: dict[str, Answer] = {}
        for meta, body in zip(answers_in, blobs[1:], strict=True):
            path = meta["path"]
            if path not in PREPARABLE:
                raise ProtocolError(f"not a preparable request: {path!r}")
            headers = tuple((str(k), str(v)) for k, v in meta["headers"])
            answers[path] = Answer(
                body, str(meta["content_type"]), _opt_str(meta["charset"]), headers
            )
        sources_in = header["sources"]
        sources = None
        if sources_in is not None:
            sources = tuple(
                SourceLine(
                    str(s["source"]),
                    bool(s["up"]),
                    bool(s["stale"]),
                    _opt_str(s["error"]),
                    None if s["age"] is None else _num(s["age"]),
                )
                for s in sources_in
            )
        return Publication(
            gzipped=blobs[0],
            answers=answers,
            ready=bool(header["ready"]),
            stalled=bool(header["stalled"]),
            stall_seconds=_num(header["stall_seconds"]),
            sources=sources,
            seq=int(header["seq"]),
            received_at=time.monotonic(),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed publish message: {type(exc).__name__}: {exc}") from None


def decode_wanted(header: Mapping[str, Any]) -> list[str]:
    """The paths of a wanted message (only preparable ones are kept)."""
    paths = header.get("paths")
    if not isinstance(paths, list):
        raise ProtocolError("wanted: paths is not a list")
    return [p for p in paths if isinstance(p, str) and p in PREPARABLE]


# --- the engine's side -------------------------------------------------------------------


class EngineLink:
    """The engine's end of the channel: publishes the latest snapshot (a newer one replaces
    one not yet written: at most one waits) and takes the front's wanted requests.
    :meth:`publish` is the refresher's ``on_publish`` hook."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._monotonic = monotonic
        self._pending: Snapshot | None = None
        self._wake = asyncio.Event()
        self._seq = 0
        self.status: Callable[[], tuple[bool, float]] = lambda: (False, 0.0)
        """``(stalled, stall_seconds)`` of the refresher, read when a snapshot is written."""
        # When the front last answered each preparable request (replaced, never changed in
        # place: the refresh's worker thread reads it).
        self._asked: Mapping[str, float] = {}
        self.closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def from_fd(cls, fd: int) -> EngineLink:
        import socket

        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_loop()),
            asyncio.create_task(self._read_loop()),
        ]

    def publish(self, snap: Snapshot) -> None:
        self._pending = snap
        self._wake.set()

    def wanted(self) -> frozenset[str]:
        """The preparable requests the front answered within ``PREPARE_WINDOW_S``."""
        asked, now = self._asked, self._monotonic()
        return frozenset(p for p, at in asked.items() if now - at <= PREPARE_WINDOW_S)

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                snap, self._pending = self._pending, None
                if snap is None:
                    continue
                stalled, stall_seconds = self.status()
                self._seq += 1
                pieces = publish_frame(
                    snap, stalled=stalled, stall_seconds=stall_seconds, seq=self._seq
                )
                del snap
                for piece in pieces:
                    view = memoryview(piece)
                    for at in range(0, len(view), CHUNK):
                        self._writer.write(view[at : at + CHUNK])
                        await self._writer.drain()
                del pieces
        except (ConnectionError, OSError):
            self.closed.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                header, _ = await read_message(self._reader)
                if header["kind"] == "wanted":
                    now = self._monotonic()
                    self._asked = {**self._asked, **dict.fromkeys(decode_wanted(header), now)}
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the front is gone
        except ProtocolError as exc:
            log.error("front_channel_broken", error=str(exc))
        self.closed.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


__all__ = [
    "EMPTY_PAGE",
    "WRITE_CHUNK",
    "Answer",
    "EngineLink",
    "ProtocolError",
    "Publication",
    "SourceLine",
    "decode_publication",
    "decode_wanted",
    "frame",
    "is_page_member",
    "publish_frame",
    "read_message",
    "wanted_frame",
]
