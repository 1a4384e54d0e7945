"""Prometheus text format 0.0.4, rendered to bytes once per refresh.

A scrape writes prepared bytes; it never formats a sample. Label values are escaped as the
format requires (backslash, double quote, newline), so a tenant named ``a"b\\c`` or holding a
newline cannot break the page. Families with no samples are left out, so a series that
disappears upstream disappears here.

Why it is fast (about 0.5 µs a sample, 10× and more ``prometheus_client.generate_latest`` on
the same samples): a chunk of a family is formatted by one ``%`` over its line template
repeated once per sample (no Python-level loop per sample); the values are written by
msgspec's shortest round-trip float encoder in one call (``repr``'s digits and form for
1e-4 <= |v| < 1e16, the rest one by one); label values are checked for characters that need
escaping by counting quotes and newlines in the chunk, and only a chunk that has one takes the
slow path. :func:`iter_render` yields the page in pieces of a bounded number of samples, so a
caller can interleave other work (see :mod:`aifinops.offload`).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter

import msgspec

from aifinops.exposition.catalog import MetricSpec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[tuple[str, ...], float]

# Samples per piece of :func:`iter_render`: about 2–3 ms of work on a slow core.
DEFAULT_CHUNK_SAMPLES = 5000


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
    parts = (text + ",").replace(".0,", ",").split(",")
    parts.pop()
    if "e" in text or "n" in text or "0.0000" in text:
        for i, v in enumerate(values):
            if v != 0.0 and not 1e-4 <= abs(v) < 1e16:
                parts[i] = format_value(v)
    if "-0" in parts:
        parts = ["0" if p == "-0" else p for p in parts]
    return parts


_first = itemgetter(0)
_second = itemgetter(1)


def _template(spec: MetricSpec) -> str:
    if not spec.labels:
        return f"{spec.name} %s\n"
    pairs = ",".join(f'{name}="%s"' for name in spec.labels)
    return f"{spec.name}{{{pairs}}} %s\n"


def _check_label_counts(spec: MetricSpec, label_sets: Sequence[tuple[str, ...]]) -> None:
    width = len(spec.labels)
    if set(map(len, label_sets)) - {width}:
        bad = next(v for v in label_sets if len(v) != width)
        raise ValueError(f"{spec.name}: expected labels {spec.labels}, got {bad}")


def _render_samples(spec: MetricSpec, template: str, samples: Sequence[Sample]) -> str:
    """The sample lines of ``samples`` (one chunk of one family), formatted by one ``%`` over
    the line template repeated once per sample."""
    label_sets: Sequence[tuple[str, ...]] = list(map(_first, samples))
    _check_label_counts(spec, label_sets)
    texts = _value_texts(list(map(float, map(_second, samples))))
    n = len(samples)
    width = len(spec.labels)
    if not width:
        return (template * n) % tuple(texts)
    body = (template * n) % _interleave(label_sets, texts, width)
    # Without escaping, a clean chunk has exactly two quotes per label, one newline per
    # sample and no backslash; anything else means some label value needs escaping.
    if body.count('"') != 2 * width * n or body.count("\n") != n or "\\" in body:
        escaped = [tuple(map(escape_label_value, labels)) for labels in label_sets]
        body = (template * n) % _interleave(escaped, texts, width)
    return body


def _interleave(
    label_sets: Sequence[tuple[str, ...]], texts: list[str], width: int
) -> tuple[str, ...]:
    """``(l1, l2, ..., value, l1, l2, ..., value, ...)``, built column by column."""
    step = width + 1
    args: list[str] = texts * step  # the right length; every slot is overwritten below
    for i in range(width):
        args[i::step] = map(itemgetter(i), label_sets)
    args[width::step] = texts
    return tuple(args)


def iter_family(family: Family, chunk_samples: int = DEFAULT_CHUNK_SAMPLES) -> Iterator[str]:
    """The text of one family (HELP, TYPE and its samples), in pieces of at most
    ``chunk_samples`` samples; nothing for a family without samples."""
    samples = family.samples
    if not samples:
        return
    spec = family.spec
    yield f"# HELP {spec.name} {_escape_help(spec.help)}\n# TYPE {spec.name} {spec.type}\n"
    template = _template(spec)
    step = max(1, chunk_samples)
    for start in range(0, len(samples), step):
        yield _render_samples(spec, template, samples[start : start + step])


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


@dataclass(frozen=True, slots=True)
class Exposition:
    """Prepared bytes for one report: plain and gzip-compressed."""

    plain: bytes
    gzipped: bytes

    @classmethod
    def from_bytes(cls, plain: bytes, level: int = 6) -> Exposition:
        return cls(plain=plain, gzipped=gzip.compress(plain, compresslevel=level, mtime=0))


__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_CHUNK_SAMPLES",
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
