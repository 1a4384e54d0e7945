"""Keep the refresh's CPU-heavy work from stalling scrapes.

The event loop serves ``/metrics`` from prepared bytes in well under a millisecond, but only
when it gets to run. A refresh at fleet scale spends about a second of CPU in pure Python
(parsing, the cost model, rendering); run on the loop, that is a second during which every
scrape waits. Measured with ``make bench`` (10k GPUs, 2 cores), the options were:

* on the loop: scrape p99 during a refresh = the refresh's CPU time (seconds);
* a worker process: no GIL to share, but the inputs and the Report must cross a pipe, and
  unpickling them holds the GIL in one call (tens of ms at 10k GPUs) — the stall moves, it
  does not go away, and the Report the API reads would have to be rebuilt on the loop side;
* cooperative chunks on the loop: works for code written for it (the renderer yields every
  5,000 samples), not for the model's plain functions;
* **a worker thread with a short switch interval** (chosen): pure-Python work is preempted
  every :data:`SWITCH_INTERVAL_S` while a scrape waits for the GIL, so a scrape waits at most
  that plus the longest single C call the worker makes (kept short: chunked JSON decoding,
  chunked rendering, zlib releases the GIL). The refresh itself takes a little longer.

API: ``await run_cpu(fn, *args)`` runs ``fn`` on the one CPU worker thread;
``await render_exposition(families)`` renders and gzips there (compression overlapped on a
second thread, since zlib releases the GIL); :func:`release` frees a refresh's old data a
chunk at a time; :func:`tune_gc` once at startup and
:func:`settle_heap` after each refresh keep the garbage collector from walking the previous
refresh's data over and over (see their docstrings).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import functools
import gc
import gzip
import io
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import compress, repeat
from typing import ParamSpec, TypeVar

from aifinops.exposition.render import (
    DEFAULT_CHUNK_SAMPLES,
    FINAL_EMPTY_BLOCK,
    Exposition,
    Family,
    iter_render,
)

P = ParamSpec("P")
T = TypeVar("T")

# While offloaded work runs, the interpreter asks a running thread to drop the GIL this often
# when another thread waits for it (CPython's default is 5 ms). 1 ms kept scrape p99 under
# 4 ms against a pure-Python worker in the bench; lower bought little and costs switches.
SWITCH_INTERVAL_S = 0.001

_cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aifinops-cpu")
_gzip = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aifinops-gzip")
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


@contextmanager
def short_switch_interval() -> Iterator[None]:
    """Lower the interpreter's switch interval while at least one caller is inside."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL_S))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


async def run_cpu(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on the CPU worker thread; the loop keeps serving meanwhile.

    ``fn`` must not touch the event loop or objects the loop mutates; the refresh's pure
    functions (parsers, ``build_report``, the family builders) qualify. Calls are serialized
    (one worker), so two refreshes never compete for the same core.
    """
    loop = asyncio.get_running_loop()
    with short_switch_interval():
        return await loop.run_in_executor(_cpu, functools.partial(fn, *args, **kwargs))


_side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aifinops-side")


async def run_side(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on the side thread: request-time work too large for the event
    loop (a JSON API answer over thousands of tenants) that must not queue behind a refresh
    on the CPU worker. The same rules as :func:`run_cpu`."""
    loop = asyncio.get_running_loop()
    with short_switch_interval():
        return await loop.run_in_executor(_side, functools.partial(fn, *args, **kwargs))


@functools.cache
def _gzip_header(level: int) -> bytes:
    # The 10-byte header exactly as this Python's gzip.compress(..., mtime=0) writes it (it
    # does not depend on the data; its OS byte differs between Python versions).
    return gzip.compress(b"", compresslevel=level, mtime=0)[:10]


# The refresh's page is compressed once per refresh and every gzip scrape reuses it, so the
# level trades the refresh's CPU against bytes on the wire: level 2 costs a third of level 6's
# CPU for about a sixth more bytes (bench/README.md, "render and release").
PAGE_GZIP_LEVEL = 2


def render_and_compress(
    families: Iterable[Family],
    level: int = PAGE_GZIP_LEVEL,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
) -> Exposition:
    """The :class:`Exposition` of ``families`` (byte for byte what
    ``Exposition.from_bytes(render(families), level)`` gives), rendered here in pieces while
    the gzip thread compresses the previous ones."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
    # The page grows in one buffer that getvalue() hands over without a copy, and each
    # piece is dropped once compressed: a list of pieces joined at the end held the page
    # twice at the render's peak.
    page = io.BytesIO()
    compressed: list[Future[bytes]] = []
    crc = 0
    for piece in iter_render(families, chunk_samples):
        page.write(piece)
        compressed.append(_gzip.submit(deflate.compress, piece))
        crc = zlib.crc32(piece, crc)
        del piece
    # A sync flush and an empty final block, as render.gzip_member: a scrape appends to it.
    compressed.append(_gzip.submit(deflate.flush, zlib.Z_SYNC_FLUSH))
    plain = page.getvalue()
    page.close()
    size = len(plain)
    trailer = struct.pack("<LL", crc, size & 0xFFFFFFFF)
    body = b"".join(f.result() for f in compressed) + FINAL_EMPTY_BLOCK
    return Exposition(plain=plain, gzipped=_gzip_header(level) + body + trailer)


async def render_exposition(
    families: Iterable[Family],
    level: int = PAGE_GZIP_LEVEL,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
) -> Exposition:
    """:func:`render_and_compress` on the CPU worker thread."""
    return await run_cpu(render_and_compress, list(families), level, chunk_samples)


# How many objects :func:`release` frees between two points where another thread may take the
# GIL: ~2,000 small objects free in well under a millisecond.
RELEASE_CHUNK = 2_000
# Containers smaller than this are freed whole (one short C call).
_RELEASE_SPLIT = 512


def release(garbage: list[object], chunk: int = RELEASE_CHUNK) -> None:
    """Free ``garbage`` (the only reference to a refresh's old data) a few thousand objects
    at a time, emptying the list.

    Why: CPython frees a container by decrementing each item in one C loop that never lets
    another thread run; dropping a tuple of 100k observations, a report's dicts of 20k rows or
    a list of 100k samples holds the GIL for tens of ms, and a scrape that arrives meanwhile
    waits that long (measured with ``make bench`` at 10k GPUs: 30–90 ms stalls at the end of
    every refresh). Here each large container (tuple, list, set, dict, and the fields of
    dataclass instances: the report, the model state, the snapshot) is taken apart into a list
    of its items first — copying references, never mutating it, so a container still shared
    with live data is left intact and only its reference is dropped — and the items are then
    dropped ``chunk`` at a time from a Python loop, between which the interpreter can switch
    threads. Objects still referenced elsewhere simply lose one reference.
    """
    # Each list to free comes with whether dataclass instances in it are taken apart: yes
    # at the top (a snapshot, its report, the report's parts), no for the rows of a large
    # container (100k observations are better freed one by one than split into fields).
    work: list[tuple[list[object], bool]] = [(garbage, True)]
    while work:
        items, structs = work[-1]
        if not items:
            work.pop()
            continue
        batch = items[-chunk:]
        del items[-chunk:]
        if not _takes_apart(batch, structs):
            del batch  # nothing in it is large: freed whole, one short C call
            continue
        for i, obj in enumerate(batch):
            shape = _shape_of(type(obj))
            if shape is None:
                continue
            if shape == "map" or shape == "seq":
                if len(obj) < _RELEASE_SPLIT:  # type: ignore[arg-type]
                    continue
                parts = (
                    [*obj.keys(), *obj.values()]  # type: ignore[attr-defined]
                    if shape == "map"
                    else list(obj)  # type: ignore[call-overload]
                )
                work.append((parts, False))
            elif structs:
                work.append(([getattr(obj, name) for name in shape], True))
            else:
                continue
            batch[i] = None  # the shell goes now; its parts are freed chunk by chunk
        del batch


def _takes_apart(batch: list[object], structs: bool) -> bool:
    """Whether :func:`release` would take any item of ``batch`` apart: a dataclass instance
    where ``structs``, or a container of :data:`_RELEASE_SPLIT` items or more.

    Why: almost every batch is rows, label tuples and floats freed whole; deciding that per
    batch with C-level passes (the item types, then the containers' lengths) instead of per
    item in Python took most of release's own CPU off a steady refresh (bench/README.md)."""
    containers: list[type] = []
    kinds = set(map(type, batch))
    for kind in kinds:
        shape = _shape_of(kind)
        if shape == "map" or shape == "seq":
            containers.append(kind)
        elif shape is not None and structs:
            return True
    if not containers:
        return False
    sized: Iterable[object] = batch
    if len(containers) != len(kinds):
        sized = compress(batch, map(isinstance, batch, repeat(tuple(containers))))
    return max(map(len, sized), default=0) >= _RELEASE_SPLIT  # type: ignore[arg-type]


_SHAPES: dict[type, str | tuple[str, ...] | None] = {}


def _shape_of(kind: type) -> str | tuple[str, ...] | None:
    """How :func:`release` takes an instance of ``kind`` apart, cached per type: ``"map"``
    (dict and subclasses), ``"seq"`` (tuple, list, set, frozenset and subclasses), the field
    names of a dataclass, or ``None`` (freed whole)."""
    try:
        return _SHAPES[kind]
    except KeyError:
        shape: str | tuple[str, ...] | None = None
        if issubclass(kind, dict):
            shape = "map"
        elif issubclass(kind, (tuple, list, set, frozenset)):
            shape = "seq"
        elif dataclasses.is_dataclass(kind):
            shape = tuple(f.name for f in dataclasses.fields(kind))
        _SHAPES[kind] = shape
        return shape


# :func:`tune_gc`'s thresholds. Young collections stay frequent and short (each walks at most
# GC_THRESHOLD0 new objects, about a millisecond); the older generations are never collected
# automatically: settle_heap() freezes what a refresh leaves alive instead. Measured with
# ``make bench`` at 10k GPUs, CPython's default (700, 10, 10) with freezing ran ~30 full
# collections per two refreshes (one of 430 ms) — after gc.freeze() its "25 % new objects"
# rule compares against a stale total — and (50_000, 10, 10) ran gen-1 collections of 150+ ms.
GC_THRESHOLD0 = 10_000
GC_NEVER = 1_000_000


def tune_gc(threshold0: int = GC_THRESHOLD0) -> None:
    """Call once in the process entry point (``aifinops.__main__``), before serving, in a
    process whose refresh loop calls :func:`settle_heap` after every refresh: freezes what
    exists (modules, configuration: never garbage), keeps young collections short and leaves
    the older generations to :func:`settle_heap`."""
    global _tuned
    gc.freeze()
    gc.set_threshold(threshold0, GC_NEVER, GC_NEVER)
    _tuned = True


def settle_heap() -> None:
    """Call after a refresh swapped its snapshot in: everything alive now (the report, the
    sources' last good data, the exposition) moves to the collector's permanent generation.

    Why: CPython's cyclic garbage collector walks every tracked object of a generation when it
    collects it; at 10k GPUs a refresh leaves about a million (rows, label maps, tuples), and
    full collections in the middle of the next refresh cost hundreds of milliseconds, holding
    the GIL. Frozen objects are still freed by reference counting when a later refresh
    replaces them (the data holds no reference cycles); only cyclic garbage among them waits,
    about 60 objects a refresh as measured, and every :data:`FULL_COLLECT_EVERY` calls this
    unfreezes and runs one full collection (a pause of up to a second at 10k GPUs, once an
    hour at a 30 s interval) to bound that.

    Does nothing unless :func:`tune_gc` was called (the process entry point opts in; a test
    process that builds apps and refreshes them keeps CPython's defaults).
    """
    global _settled
    if not _tuned:
        return
    _settled += 1
    if _settled % FULL_COLLECT_EVERY == 0:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


FULL_COLLECT_EVERY = 120
_settled = 0
_tuned = False


# glibc's mallopt(3) parameter number, and the fixed threshold set with it.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have the C allocator give every block of ``threshold`` bytes or more its own mapping,
    unmapped when freed; False where the C library has no ``mallopt`` (not glibc) or refuses.

    Why: glibc raises its threshold to the size of each large block freed (up to 32 MiB), so
    after the first refresh its pages, bodies and large arrays and dicts come from the heap,
    whose freed holes are kept: RSS grows by tens of MiB and every refresh's peak stacks on
    it. A fixed threshold turns that off (bench/README.md)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def apply_runtime_settings() -> Callable[[], None]:
    """Put this process in the exporter's production runtime settings (the GC tuning of
    :func:`tune_gc`, which :func:`settle_heap` then follows, and the allocator's fixed
    :func:`pin_mmap_threshold`); returns a function that undoes the GC part (a fixed
    threshold is harmless to a test process). The one place those settings are decided:
    ``aifinops.__main__`` applies them for the process's life, and the fault tests
    (``tests/faults/conftest.py``) for each test, so that they run the exporter as
    production runs it."""
    previous = gc.get_threshold()
    tune_gc()
    pin_mmap_threshold()

    def undo() -> None:
        global _tuned, _settled
        _tuned = False
        _settled = 0
        gc.set_threshold(*previous)
        gc.unfreeze()
        gc.collect()

    return undo


__all__ = [
    "PAGE_GZIP_LEVEL",
    "SWITCH_INTERVAL_S",
    "apply_runtime_settings",
    "pin_mmap_threshold",
    "release",
    "render_and_compress",
    "render_exposition",
    "run_cpu",
    "run_side",
    "settle_heap",
    "short_switch_interval",
    "tune_gc",
]
