"""Prometheus text format 0.0.4, rendered to bytes once per refresh.

A scrape writes prepared bytes; it never formats a sample. Label values are escaped as the
format requires (backslash, double quote, newline), so a tenant named ``a"b\\c`` or holding a
newline cannot break the page. Families with no samples are left out, so a series that
disappears upstream disappears here.

Why it is fast (figures against ``prometheus_client.generate_latest`` on the same samples:
bench/README.md): a chunk of a family is one ``str.join`` over a list laid out as its lines
are — the constant pieces of a line (``name{tenant="``, ``",model="``, ``"} ``, newline) repeated
once per sample, the label columns (one transposing ``zip``) and the value texts copied into
their slots by strided slice assignment — so there is no Python-level loop per sample and no
format string to parse (``%`` over a repeated line template, the previous way, was slower);
the values are written by msgspec's shortest round-trip float encoder
in one call (``repr``'s digits and form for 1e-4 <= |v| < 1e16, the rest one by one, each
distinct one formatted once); each label column is checked for characters that need escaping
in one pass over its concatenation, and only a column that has one takes the slow path; for
samples held in :class:`Columns` with a key set, those label columns are kept per family while
the key set is unchanged, so a steady refresh formats only the values.
:func:`iter_render` yields the page in pieces of a bounded number of samples, so a caller can
interleave other work (see :mod:`aifinops.offload`).
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import eq, itemgetter
from typing import overload

import msgspec

from aifinops.exposition.catalog import MetricSpec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[tuple[str, ...], float]

# Samples per piece of :func:`iter_render`: about 2–3 ms of work on a slow core.
DEFAULT_CHUNK_SAMPLES = 5000


class Columns(Sequence[Sample]):
    """A family's samples held as two columns, ``labels`` (one tuple per series) and
    ``values``, read as a sequence of ``(labels, value)`` samples.

    Why: the large families are built column by column (no tuple per sample to make and free
    each refresh), and ``key`` names the key set: the families builders hand the same ``key``
    object while a family's sorted label set is unchanged between refreshes, so what the
    renderer and the cap derive from the labels alone can be kept (``None``: no such promise).
    """

    __slots__ = ("key", "labels", "values")

    def __init__(
        self,
        labels: Sequence[tuple[str, ...]],
        values: Sequence[float],
        key: object | None = None,
    ) -> None:
        if len(labels) != len(values):
            raise ValueError(f"{len(labels)} label sets for {len(values)} values")
        self.labels = labels
        self.values = values
        self.key = key

    def __len__(self) -> int:
        return len(self.labels)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> Columns: ...

    def __getitem__(self, index: int | slice) -> Sample | Columns:
        if isinstance(index, slice):
            return Columns(self.labels[index], self.values[index])
        return self.labels[index], self.values[index]

    def __iter__(self) -> Iterator[Sample]:
        return zip(self.labels, self.values, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(map(eq, self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Columns({list(self)!r})"


@dataclass(frozen=True, slots=True)
class Family:
    spec: MetricSpec
    samples: Sequence[Sample]


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """The value as written on the page: Python's shortest round-trip ``repr`` of the float,
    without a trailing ``.0`` (``3``, ``0.25``, ``1e+20``), and ``NaN``, ``+Inf``, ``-Inf``.
    :func:`render` writes exactly this, in bulk."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
        return "0" if text == "-0" else text
    return _SPECIAL.get(text, text)


_SPECIAL = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}
_encode_json = msgspec.json.Encoder().encode


def _value_texts(values: list[float]) -> list[str]:
    """``format_value`` of each value, in bulk: msgspec writes the same shortest round-trip
    digits as ``repr`` several times faster, in the same form for 0 and 1e-4 <= |v| < 1e16;
    the values outside that range (and NaN, ±Inf) are formatted one by one."""
    text = _encode_json(values)[1:-1].decode("ascii")
    trimmed = (text + ",").replace(".0,", ",")
    parts = trimmed.split(",")
    parts.pop()
    if "e" in text or "n" in text or "0.0000" in text:
        # Counters of small sums repeat the same tiny values many times, and repr is the
        # costly part (a few thousand instructions a value): format each distinct one once.
        done: dict[float, str] = {}
        for i, v in enumerate(values):
            if v != 0.0 and not 1e-4 <= abs(v) < 1e16:
                formatted = done.get(v)
                if formatted is None:
                    formatted = done[v] = format_value(v)
                parts[i] = formatted
    if "-0," in trimmed:  # -0.0 (no other value's text holds "-0,")
        parts = ["0" if p == "-0" else p for p in parts]
    return parts


_first = itemgetter(0)
_second = itemgetter(1)


@functools.lru_cache(maxsize=512)
def _line_pieces(spec: MetricSpec) -> tuple[str, str, tuple[str, ...]]:
    """The family's ``# HELP``/``# TYPE`` lines, the first line's opening, and the constant
    pieces of a line in :func:`_render_samples`' layout: ``(before label 0, before label 1,
    ..., before the value)``, where the piece before label 0 also ends the previous line.
    Cached: the catalog's specs are a few dozen constants."""
    header = f"# HELP {spec.name} {_escape_help(spec.help)}\n# TYPE {spec.name} {spec.type}\n"
    if not spec.labels:
        return header, f"{spec.name} ", (f"\n{spec.name} ",)
    first = f'{spec.name}{{{spec.labels[0]}="'
    between = tuple(f'",{name}="' for name in spec.labels[1:])
    return header, first, (f"\n{first}", *between, '"} ')


def _label_columns(spec: MetricSpec, samples: Sequence[Sample]) -> list[Sequence[str]]:
    """The label values of ``samples`` column by column (one transposing ``zip``, which also
    proves every label tuple has the same width), as written on the page."""
    label_sets = samples.labels if isinstance(samples, Columns) else map(_first, samples)
    try:
        columns: list[Sequence[str]] = list(zip(*label_sets, strict=True))
    except ValueError:
        columns = []  # tuples of different widths: reported below
    if len(columns) != len(spec.labels) or (not columns and any(map(_first, samples))):
        bad = next(labels for labels, _ in samples if len(labels) != len(spec.labels))
        raise ValueError(f"{spec.name}: expected labels {spec.labels}, got {bad}")
    return [_label_texts(column) for column in columns]


def _label_texts(column: Sequence[str]) -> Sequence[str]:
    """One column of label values as written on the page: escaped where they need it
    (rarely: one pass over their concatenation says whether any does)."""
    try:
        joined = "".join(column)
    except TypeError:  # a non-string label value: written as str() writes it
        column = list(map(str, column))
        joined = "".join(column)
    if "\\" in joined or '"' in joined or "\n" in joined:
        return list(map(escape_label_value, column))
    return column


def _render_samples(
    spec: MetricSpec,
    opening: str,
    row: tuple[str, ...],
    samples: Sequence[Sample],
    columns: list[Sequence[str]] | None = None,
) -> str:
    """The sample lines of ``samples`` (one chunk of one family), after ``opening`` (the
    first line's opening, with the family's HELP and TYPE lines before it in a first chunk):
    one ``join`` over ``[opening, label 0, piece, label 1, ..., piece, value, newline +
    opening, label 0, ...]``, the constant pieces laid out by repeating one line's worth
    (``row``), the labels and values copied in column by column (``columns``: the label
    columns when known already)."""
    if columns is None:
        columns = _label_columns(spec, samples)
    values = samples.values if isinstance(samples, Columns) else map(_second, samples)
    texts = _value_texts(list(map(float, values)))
    step = 2 * (len(columns) + 1)
    parts: list[str] = [opening] * step  # the right length; every slot is overwritten below
    parts[0::2] = row
    parts *= len(samples)
    for i, column in enumerate(columns):
        parts[2 * i + 1 :: step] = column
    parts[step - 1 :: step] = texts
    parts[0] = opening
    parts.append("\n")
    return "".join(parts)


def iter_family(family: Family, chunk_samples: int = DEFAULT_CHUNK_SAMPLES) -> Iterator[str]:
    """The text of one family (HELP, TYPE and its samples), in pieces of at most
    ``chunk_samples`` samples; nothing for a family without samples."""
    samples = family.samples
    if not samples:
        return
    spec = family.spec
    header, first, row = _line_pieces(spec)
    step = max(1, chunk_samples)
    kept = _kept_label_columns(spec, samples, step)
    for n, start in enumerate(range(0, len(samples), step)):
        opening = first if start else header + first
        chunk = samples[start : start + step]
        yield _render_samples(spec, opening, row, chunk, None if kept is None else kept[n])


# Per family (its spec): the key set (Columns.key), the chunk size and the label columns of each
# chunk as written on the page, replaced whole (a render on the side thread reads a whole
# entry). Bounded by the catalog: one entry per family, the last page's.
_LABEL_COLUMNS: dict[MetricSpec, tuple[object, int, list[list[Sequence[str]]]]] = {}


def _kept_label_columns(
    spec: MetricSpec, samples: Sequence[Sample], step: int
) -> list[list[Sequence[str]]] | None:
    """The label columns of each chunk of ``samples``, kept while its key set is unchanged
    (so a steady refresh formats only its values); ``None`` for samples without a key set."""
    if not isinstance(samples, Columns) or samples.key is None:
        return None
    entry = _LABEL_COLUMNS.get(spec)
    if entry is not None and entry[0] == samples.key and entry[1] == step:
        return entry[2]
    kept = [
        _label_columns(spec, samples[start : start + step])
        for start in range(0, len(samples), step)
    ]
    _LABEL_COLUMNS[spec] = (samples.key, step, kept)
    return kept


def iter_render(
    families: Iterable[Family], chunk_samples: int = DEFAULT_CHUNK_SAMPLES
) -> Iterator[bytes]:
    """The page as UTF-8 pieces of at most ``chunk_samples`` samples each; their
    concatenation is :func:`render`'s result."""
    for family in families:
        for piece in iter_family(family, chunk_samples):
            yield piece.encode("utf-8")


def render_family(family: Family) -> str:
    """The text of one family; empty for a family without samples."""
    return "".join(iter_family(family))


def render(families: Iterable[Family]) -> bytes:
    return b"".join(iter_render(families))


# A deflate stream's last block, empty (BFINAL=1, fixed Huffman, end of block). The prepared
# gzip ends its data with a sync flush and then this block, so a scrape can put more deflate
# blocks in its place (the process_* series) and still send one gzip member.
FINAL_EMPTY_BLOCK = b"\x03\x00"
_GZIP_TAIL = len(FINAL_EMPTY_BLOCK) + 8  # + CRC32 and size


def gzip_member(plain: bytes, level: int = 6) -> bytes:
    """``plain`` as one gzip member whose deflate data ends with a sync flush and an empty
    final block (what :meth:`Exposition.gzipped_with` relies on); any gzip reader reads it."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = deflate.compress(plain) + deflate.flush(zlib.Z_SYNC_FLUSH) + FINAL_EMPTY_BLOCK
    header = gzip.compress(b"", compresslevel=level, mtime=0)[:10]
    return header + body + struct.pack("<LL", zlib.crc32(plain), len(plain) & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Exposition:
    """Prepared bytes for one report: plain and gzip-compressed."""

    plain: bytes
    gzipped: bytes

    @classmethod
    def from_bytes(cls, plain: bytes, level: int = 6) -> Exposition:
        return cls(plain=plain, gzipped=gzip_member(plain, level))

    def gzipped_with(self, tail: bytes) -> bytes:
        """The gzip of ``plain + tail`` as one member, without compressing ``plain`` again:
        the prepared deflate blocks, then ``tail``'s (level 1), then a new trailer."""
        gz = self.gzipped
        if gz[-_GZIP_TAIL:-8] != FINAL_EMPTY_BLOCK:
            return gzip.compress(self.plain + tail, compresslevel=1, mtime=0)
        (crc,) = struct.unpack("<L", gz[-8:-4])
        deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
        blocks = deflate.compress(tail) + deflate.flush()
        size = (len(self.plain) + len(tail)) & 0xFFFFFFFF
        return gz[:-_GZIP_TAIL] + blocks + struct.pack("<LL", zlib.crc32(tail, crc), size)


__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_CHUNK_SAMPLES",
    "Columns",
    "Exposition",
    "Family",
    "Sample",
    "escape_label_value",
    "format_value",
    "iter_family",
    "iter_render",
    "render",
    "render_family",
]
