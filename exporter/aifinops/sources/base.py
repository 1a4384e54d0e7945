"""What every source shares: the error type with a bounded reason, and a capped HTTP GET.

A source is an object with a ``name`` and ``async fetch(client) -> data``: ``fetch`` does
the I/O and calls its module's pure ``parse_*`` function. Every failure is raised as
:class:`SourceError` with one of :data:`REASONS`, which the refresh loop counts in
``aifinops_source_errors_total{reason}``; it never sees an httpx or parser exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import io
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

import httpx

from aifinops.safefile import read_secret_file

# The reasons live with the source health the exposition reads (status.py).
from aifinops.status import REASONS as REASONS
from aifinops.status import Reason as Reason
from aifinops.status import ScrapeTargets

T_co = TypeVar("T_co", covariant=True)


_P = ParamSpec("_P")
_R = TypeVar("_R")


class CpuRunner(Protocol):
    """Runs ``fn(*args, **kwargs)`` off the event loop and awaits its result. The composition
    root (``assemble.py``) hands each source the CPU worker (``offload.run_cpu``); a source
    never imports it, so what runs where is decided in one place."""

    def __call__(
        self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Awaitable[_R]: ...


class SourceError(Exception):
    """A failed fetch. ``reason`` is a bounded label value; ``str()`` is for the log."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


class Slot(enum.Enum):
    """Which part of the refresh's inputs a source's data fills: the loop routes by this,
    never by a source's name (docs/architecture.md)."""

    GPUS = "gpus"  # tuple[GpuSample, ...]: DCGM's device readings
    ALLOCATIONS = "allocations"  # AllocationSet: OpenCost's rate window
    MONTHLY = "monthly"  # DailyAllocationSets: OpenCost's month to date
    PRICES = "prices"  # LlmPriceCatalog: the LLM price list
    TOKENS = "tokens"  # TokenObservation and TokenColumns items (``origins`` when it has them)
    LATENCY = "latency"  # Mapping[(model, provider), p95 seconds]
    SHARED = "shared"  # tuple[SharedHold, ...]: HAMi's per-pod device shares and live use
    ENERGY = "energy"  # EnergyReadings: each GPU's joules since the previous read


class Source(Protocol, Generic[T_co]):
    """What the refresh loop knows of a source: all of it declared here, so the loop never
    asks for a source's class or name (docs/architecture.md).

    ``slot``: the part of the inputs its data fills. ``local``: its data is in-process (the
    bundled price list, the push store), so having it does not make the exporter ready.
    ``min_interval_seconds``: fetch at most this often (0: every refresh; a heavy query such
    as the month to date sets it). ``first_read_baseline``: its first read only sets
    baselines (a counter's first value is not yet an increment), so the loop's first cycle
    publishes without waiting for it and reads it right after (``Refresher.refresh_once``).
    ``targets``: its scrape targets' health for the self-metrics, None for a source without
    several targets."""

    name: str
    slot: Slot

    @property
    def local(self) -> bool: ...

    @property
    def min_interval_seconds(self) -> float: ...

    @property
    def first_read_baseline(self) -> bool: ...

    @property
    def targets(self) -> ScrapeTargets | None: ...

    async def fetch(self, client: httpx.AsyncClient) -> T_co: ...


def read_bearer_token(path: Path | None) -> dict[str, str]:
    """Authorization header from a token file (never from the config text itself)."""
    if path is None:
        return {}
    try:
        # A regular file within a bound: a FIFO here would stall the refresh (safefile.py).
        token = read_secret_file(path).decode("utf-8", "replace").strip()
    except OSError as exc:
        raise SourceError("invalid", f"cannot read bearer token file: {exc.strerror}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def same_host_redirect(url: str, resp: httpx.Response) -> str | None:
    """Where a redirect answer points, when that is the same scheme, host and port as
    ``url``; else ``None``. LiteLLM answers ``/metrics`` with a 307 to ``/metrics/``; a
    redirect elsewhere is refused: the request's credentials would go with it, and an
    upstream could point the exporter at any address (SSRF)."""
    location = resp.headers.get("location")
    if resp.status_code not in _REDIRECT_STATUSES or not location:
        return None
    try:
        origin = httpx.URL(url)
        target = origin.join(location)
    except (httpx.InvalidURL, ValueError):
        return None
    same = (target.scheme, target.host, target.port) == (origin.scheme, origin.host, origin.port)
    return str(target) if same and not target.userinfo else None


async def get_bytes(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    redirects: int = 0,
) -> bytes:
    """GET ``url`` and return the body, refusing bodies over ``max_bytes``.

    The body is streamed (and inflated, :func:`read_body`) so that an oversized response is
    cut off at the cap instead of being held in memory whole. A redirect is followed only to
    the same scheme, host and port (:func:`same_host_redirect`), at most
    :data:`MAX_REDIRECTS` times. Raises :class:`SourceError` for every failure.
    """
    # Grown in place and handed out without a copy (BytesIO.getvalue shares its buffer when
    # nothing else does): a list of chunks and their join held the page twice at the end, a
    # 34 MB LiteLLM page 68 MB (bench/README.md, profile summary).
    body = io.BytesIO()
    try:
        async with contextlib.aclosing(
            get_chunks(
                client,
                url,
                timeout=timeout,
                max_bytes=max_bytes,
                params=params,
                headers=headers,
                redirects=redirects,
            )
        ) as chunks:
            async for chunk in chunks:
                body.write(chunk)
        return body.getvalue()
    finally:
        # A failure after reading part of the body must not keep it: the exception's
        # traceback holds this frame, and the frame this buffer, until the exception dies.
        body.close()


async def get_chunks(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    redirects: int = 0,
) -> AsyncGenerator[bytes, None]:
    """:func:`get_bytes`'s body as it arrives, in the pieces :func:`read_body` gives, with
    the same checks and errors (a caller that stops early closes it with
    ``contextlib.aclosing``). A failure may come after some pieces: the caller must not keep
    what it made of them."""
    responded = False
    try:
        async with client.stream(
            "GET", url, params=params, headers=accept_encoding(headers), timeout=timeout
        ) as resp:
            responded = True
            if resp.status_code != 200:
                target = same_host_redirect(url, resp)
                if target is not None and redirects < MAX_REDIRECTS:
                    # A Location with a query keeps it; one without gets the request's again.
                    # The redirect's own body is not read.
                    async with contextlib.aclosing(
                        get_chunks(
                            client,
                            target,
                            timeout=timeout,
                            max_bytes=max_bytes,
                            params=None if httpx.URL(target).query else params,
                            headers=headers,
                            redirects=redirects + 1,
                        )
                    ) as chunks:
                        async for chunk in chunks:
                            yield chunk
                    return
            check_response(resp, url, max_bytes)
            async for chunk in read_body(resp, url, max_bytes):
                yield chunk
    except httpx.TimeoutException:
        raise SourceError("timeout", f"timed out after {timeout:g}s: {url}") from None
    except httpx.TransportError as exc:
        raise transport_error(exc, url, responded) from None


def transport_error(exc: httpx.TransportError, url: str, responded: bool) -> SourceError:
    """The :class:`SourceError` for a transport failure: a peer that closes the connection
    before any response is unreachable ("connect"); one that breaks off a body it started
    (RemoteProtocolError mid-body) sent a truncated payload ("parse")."""
    truncated = responded and isinstance(exc, httpx.RemoteProtocolError)
    kind: Reason = "parse" if truncated else "connect"
    return SourceError(kind, f"{type(exc).__name__} for {url}: {exc}")


def check_response(resp: httpx.Response, url: str, max_bytes: int) -> None:
    """HTTP status 200 and a declared size within ``max_bytes`` (:class:`SourceError`)."""
    if resp.status_code != 200:
        raise SourceError("http_status", f"HTTP {resp.status_code} from {url}")
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise SourceError("too_large", f"{url} declares {declared} bytes, over the {max_bytes} cap")


# --- bodies: read raw, inflated here with a cap -------------------------------------------
# httpx inflates each received chunk whole: one 64 KiB chunk of a gzip bomb becomes 64 MiB
# before any cap can look at it (a 78 KB answer reached 1.85 GiB). Bodies are read raw and
# inflated here, at most INFLATE_CHUNK bytes per call, so a body is cut at the cap while it
# inflates and memory never exceeds the cap plus one chunk.
ACCEPT_ENCODING = "gzip, deflate"
INFLATE_CHUNK = 256 * 1024
MAX_ENCODING_LAYERS = 2


# --- large bodies: one source's at a time ----------------------------------------------
# The sources of a refresh fetch concurrently, but they parse on one CPU worker thread, so
# the concurrency buys network overlap, not CPU: at fleet scale it held the large bodies
# (OpenCost's pieces, the DCGM answer, a token page) at once, each with what its parse
# builds beside its previous data (the refresh's peak RSS). A fetch inside
# LargeBodies.scope that reads a body past LARGE_BODY_BYTES first takes the gate and keeps
# it until that fetch ends (its parse and the release of its old data included), so the
# big ones run one after another; small bodies never wait, and each upstream has already
# answered (headers in) when a body waits, so its own compute time still overlaps.
LARGE_BODY_BYTES = 8 * 1024 * 1024


class _Scope:
    """One fetch's claim on a :class:`LargeBodies` gate (shared by the tasks it starts)."""

    __slots__ = ("admitting", "closed", "gate", "held", "wait")

    def __init__(self, gate: LargeBodies, wait: float) -> None:
        self.gate = gate
        self.wait = wait
        self.held = False
        self.closed = False
        self.admitting: asyncio.Future[None] | None = None


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "aifinops_large_body_scope", default=None
)


class LargeBodies:
    """A gate that lets one fetch at a time hold large bodies (the refresh loop has one and
    opens a :meth:`scope` around each source's fetch; :func:`read_body` admits a body to it
    once the body is known to be large).

    Waiting is bounded (``wait`` of the scope): after that the body goes on without the
    gate, as every body did before, so a gate can delay a fetch but never fail it (a fetch
    that waits on another source's page read, as DCGM and energy share scrape pages, cannot
    deadlock on it)."""

    def __init__(self, threshold: int = LARGE_BODY_BYTES) -> None:
        self.threshold = threshold
        self._lock = asyncio.Lock()
        self.admitted = 0  # fetches that took the gate (tests, benchmarks)
        self.bypassed = 0  # fetches that stopped waiting for it

    @contextlib.asynccontextmanager
    async def scope(self, wait: float) -> AsyncIterator[None]:
        """The fetch run inside is one claimant: its large bodies wait for the gate (at most
        ``wait`` seconds), which it then holds until the block ends."""
        claim = _Scope(self, wait)
        token = _scope.set(claim)
        try:
            yield
        finally:
            _scope.reset(token)
            claim.closed = True
            if claim.held:
                claim.held = False
                self._lock.release()

    async def _admit(self, claim: _Scope) -> None:
        if claim.held or claim.closed:
            return
        if claim.admitting is not None:  # another body of the same fetch is waiting
            await asyncio.shield(claim.admitting)
            return
        claim.admitting = asyncio.get_running_loop().create_future()
        try:
            try:
                await asyncio.wait_for(self._lock.acquire(), claim.wait)
            except TimeoutError:
                self.bypassed += 1
                claim.closed = True  # the rest of this fetch does not wait again
            else:
                if claim.closed:  # the fetch ended while its body waited
                    self._lock.release()
                else:
                    claim.held = True
                    self.admitted += 1
        finally:
            done, claim.admitting = claim.admitting, None
            done.set_result(None)


async def admit_large_body(size: int) -> None:
    """Called by :func:`read_body` with a body's (declared or so far read) size: past the
    threshold of the enclosing :meth:`LargeBodies.scope`, wait for its gate. Outside a scope
    (tests, benchmarks, the loop's deferred fetches) nothing waits."""
    claim = _scope.get()
    if claim is not None and size >= claim.gate.threshold and not claim.held:
        await claim.gate._admit(claim)


def accept_encoding(headers: Mapping[str, str] | None) -> dict[str, str]:
    """``headers`` asking for the encodings :func:`read_body` inflates (and no others)."""
    out = dict(headers or {})
    if not any(k.lower() == "accept-encoding" for k in out):
        out["Accept-Encoding"] = ACCEPT_ENCODING
    return out


class Inflater:
    """One ``gzip`` or ``deflate`` layer, inflated ``INFLATE_CHUNK`` bytes at a time.

    ``deflate`` is zlib-wrapped by the RFC and raw in practice (both accepted, as httpx and
    browsers do); concatenated gzip members are read one after another.
    """

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._first = True
        self._d = self._new(b"")

    def _new(self, head: bytes) -> Any:
        if self._encoding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # RFC 1950 header: compression method 8 in the low nibble of the first byte.
        raw = bool(head) and head[0] & 0x0F != 8
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of ``data``, in pieces of at most :data:`INFLATE_CHUNK`.
        Raises :class:`zlib.error` for a corrupt stream."""
        if self._first and data:
            self._first = False
            self._d = self._new(data)
        while data:
            if self._d.eof:
                # Another gzip member; trailing bytes after a deflate stream are ignored.
                if self._encoding != "gzip" or not data.strip(b"\0"):
                    return
                self._d = self._new(data)
            out = self._d.decompress(data, INFLATE_CHUNK)
            data = self._d.unconsumed_tail or self._d.unused_data
            if out:
                yield out
            while len(out) == INFLATE_CHUNK and not self._d.eof and not self._d.unconsumed_tail:
                # Output still pending for input zlib has already taken.
                out = self._d.decompress(b"", INFLATE_CHUNK)
                if out:
                    yield out

    def finished(self) -> bool:
        """Whether the stream ended where it should (else the body was cut off)."""
        return self._first or bool(self._d.eof)


def encodings(resp: httpx.Response, url: str) -> list[str]:
    """The response's ``Content-Encoding`` layers in the order to undo them."""
    header = resp.headers.get("content-encoding", "")
    layers = [e.strip().lower() for e in header.split(",") if e.strip()]
    layers = [e for e in layers if e != "identity"]
    if len(layers) > MAX_ENCODING_LAYERS or any(e not in ("gzip", "deflate") for e in layers):
        raise SourceError("parse", f"unsupported Content-Encoding {header[:60]!r} from {url}")
    return layers[::-1]


async def read_body(resp: httpx.Response, url: str, max_bytes: int) -> AsyncIterator[bytes]:
    """The body of ``resp`` in chunks, inflated (``gzip``, ``deflate``) while it arrives;
    :class:`SourceError` ``too_large`` as soon as the inflated size passes ``max_bytes``
    (or the raw size does), ``parse`` for a corrupt or cut-off compressed stream."""
    if resp.is_stream_consumed:
        # A response built in memory (httpx.MockTransport in tests): httpx holds its
        # content already; only the cap applies.
        content = resp.content
        if len(content) > max_bytes:
            raise SourceError("too_large", f"{url} sent over the {max_bytes}-byte cap")
        await admit_large_body(len(content))
        if content:
            yield content
        return
    layers = [Inflater(e) for e in encodings(resp, url)]
    size = 0
    raw = 0
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit():
        # Known to be large: wait before taking any of it (it stays in the socket).
        await admit_large_body(int(declared))

    def count(piece: bytes) -> bytes:
        nonlocal size
        size += len(piece)
        if size > max_bytes:
            raise SourceError("too_large", f"{url} sent over the {max_bytes}-byte cap")
        return piece

    try:
        async for chunk in resp.aiter_raw():
            raw += len(chunk)
            if raw > max_bytes:
                raise SourceError("too_large", f"{url} sent over the {max_bytes}-byte cap")
            for piece in _through(layers, chunk):
                yield count(piece)
            # Compressed or without a length: large once this much has come in.
            await admit_large_body(size)
        if not all(layer.finished() for layer in layers):
            raise SourceError("parse", f"compressed body from {url} is cut off")
    except zlib.error as exc:
        raise SourceError("parse", f"corrupt compressed body from {url}: {exc}") from None


def _through(layers: list[Inflater], chunk: bytes) -> Iterator[bytes]:
    """``chunk`` through every layer (outermost first), a piece at a time."""
    if not layers:
        if chunk:
            yield chunk
        return
    for piece in layers[0].feed(chunk):
        yield from _through(layers[1:], piece)
