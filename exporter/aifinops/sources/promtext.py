"""A fast, pure parser of the Prometheus text exposition format 0.0.4.

This is the format dcgm-exporter (and vLLM, LiteLLM, ...) serve on ``/metrics``::

    # HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
    # TYPE DCGM_FI_DEV_GPU_UTIL gauge
    DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-c2f7...",modelName="NVIDIA L4",Hostname="n1"} 0

Only samples are returned; ``# HELP``, ``# TYPE`` and other comment lines are skipped, so a
counter keeps the name it was exposed with (``prometheus_client``'s parser renames a counter
``x`` to ``x_total``; this one does not).

Why not ``prometheus_client.parser``: it walks every label string one character at a time in
Python. Here a line is split with ``str`` methods, lines whose metric name is not wanted are
skipped by a prefix test before their labels are looked at, and each distinct label string is
parsed once per call (dcgm-exporter repeats one label string per GPU on every metric).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TypeAlias

Sample: TypeAlias = tuple[str, Mapping[str, str], float]
"""(metric name, labels, value). The value is a float; NaN and ±Inf are kept."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# One key part of a label string split on '"': an optional comma, the name, '='.
_LABEL_KEY = re.compile(r"[ \t]*(,?)[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*")
# One label pair where a value may hold escapes (the slow path).
_ESCAPED_PAIR = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*')
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"\\": "\\", '"': '"', "n": "\n"}
_NO_LABELS: Mapping[str, str] = MappingProxyType({})


class LabelCache:
    """Label sets parsed by one :func:`parse_text` call, kept for the next call on the same
    page: dcgm-exporter and LiteLLM repeat their label strings from one scrape to the next,
    so a steady page parses no label set twice. Holds only what the last call used, so it
    stays the size of one page. One cache per page (per scrape target)."""

    __slots__ = ("previous",)

    def __init__(self) -> None:
        self.previous: dict[str, Mapping[str, str]] = {}


def parse_text(
    text: str, wanted: frozenset[str] | None = None, cache: LabelCache | None = None
) -> list[Sample]:
    """Return the samples of ``text`` whose metric name is in ``wanted`` (``None``: all).

    Handles comments, blank lines, ``\\r\\n`` line ends, leading blanks, label values with the
    escapes ``\\\\``, ``\\"`` and ``\\n``, a trailing comma in a label set, metric names with
    colons (``vllm:num_requests_running``), ``NaN``/``+Inf``/``-Inf`` values and an optional
    integer timestamp (milliseconds; validated, then dropped).

    The label mappings are shared between samples of one call that have the same label
    string (and, with a ``cache``, with earlier calls): treat them as read-only.

    Only lines with a wanted name are checked, so a malformed line of another metric does not
    fail the parse. A malformed wanted line raises :class:`ValueError` naming its line number
    (1-based) and its metric name, never its label values: the message is logged and shown on
    ``/readyz``, and a label value may be an API key hash or an email address (LiteLLM's).

    With ``wanted``, the wanted lines are found by searching the text for each name at a line
    start, so the lines of other metrics are never looked at one by one.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if wanted is not None and not wanted:
        return []
    lines: Iterable[tuple[int, str]] = (
        _wanted_lines(text, wanted) if wanted is not None else _all_lines(text)
    )
    prefixes = tuple(wanted) if wanted is not None else None
    samples: list[Sample] = []
    append = samples.append
    previous = cache.previous if cache is not None else {}
    label_cache: dict[str, Mapping[str, str]] = {}
    key_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
    names_ok: set[str] = set()
    name = ""
    for lineno, line in lines:
        if not line:
            continue
        first = line[0]
        if first == "#":
            continue
        if first == " " or first == "\t":
            line = line.strip(" \t")
            if not line or line[0] == "#":
                continue
        if prefixes is not None and not line.startswith(prefixes):
            continue
        try:
            brace = line.find("{")
            if brace == -1:
                name, _, tail = line.replace("\t", " ").partition(" ")
            else:
                name = line[:brace]
                if name[-1:] in (" ", "\t"):
                    name = name.rstrip(" \t")
            if name not in names_ok:
                if wanted is not None and name not in wanted:
                    continue
                if not _METRIC_NAME.fullmatch(name):
                    raise ValueError(f"invalid metric name {name[:40]!r}")
                names_ok.add(name)
            if brace == -1:
                labels: Mapping[str, str] = _NO_LABELS
            else:
                close = line.rfind("}")
                if close < brace:
                    raise ValueError("label set without a closing '}'")
                label_text = line[brace + 1 : close]
                cached = label_cache.get(label_text)
                if cached is None:
                    cached = previous.get(label_text)
                    if cached is None:
                        cached = _parse_labels(label_text, key_cache)
                    label_cache[label_text] = cached
                labels = cached
                tail = line[close + 1 :]
            if "_" in tail:  # float() accepts '1_0'; the exposition format does not
                raise ValueError("invalid value")
            try:
                # Fast path: float() takes the value with its surrounding blanks.
                value = float(tail)
            except ValueError:
                value = _parse_value_and_timestamp(tail)
            append((name, labels, value))
        except ValueError as exc:
            if lineno < 0:  # an offset in the text (see _wanted_lines)
                lineno = text.count("\n", 0, -lineno - 1) + 1
            where = f" in a {name!r} sample" if name in names_ok else ""
            raise ValueError(f"line {lineno}: {exc}{where}") from None
    if cache is not None:
        cache.previous = label_cache
    return samples


def _all_lines(text: str) -> Iterator[tuple[int, str]]:
    """Every line with its number, one at a time (a page is never copied whole as a list of
    lines: at 10k GPUs that would be tens of MB more at the peak of a refresh)."""
    start = 0
    lineno = 1
    find = text.find
    while True:
        end = find("\n", start)
        if end == -1:
            yield lineno, text[start:]
            return
        yield lineno, text[start:end]
        start = end + 1
        lineno += 1


def _wanted_lines(text: str, wanted: frozenset[str]) -> Iterator[tuple[int, str]]:
    """The lines whose first word is a wanted name (followed by ``{``, a blank or the line
    end; leading blanks allowed), in text order, each with ``-(its offset + 1)`` for the
    error message.

    The format keeps a family's lines together, so once a search finds a family's first
    line the rest are walked with ``startswith`` at each next line; a search resumes after
    the group (a page that splits a family is still read whole). A name found elsewhere (in
    a comment, inside a label value) is skipped: only blanks may stand between it and the
    line start."""
    size = len(text)
    found: list[tuple[int, int]] = []
    for name in wanted:
        if not name:
            continue
        n = len(name)
        at = text.find(name)
        while at != -1:
            start = at
            while start > 0 and text[start - 1] in " \t":
                start -= 1
            if (start > 0 and text[start - 1] != "\n") or (
                at + n < size and text[at + n] not in _AFTER_NAME
            ):
                at = text.find(name, at + n)  # not at a line start, or a longer name
                continue
            end = text.find("\n", at)
            if end == -1:
                end = size
            found.append((start, end))
            at = end + 1 if text.startswith(name, end + 1) else text.find(name, end)
    if len(wanted) > 1:
        found.sort()
    for start, end in found:
        yield -start - 1, text[start:end]


_AFTER_NAME = frozenset("{ \t\n")


def decode_page(body: bytes) -> str:
    """A ``/metrics`` body as text: UTF-8, and ending in a newline when not empty.

    The format requires every line, the last included, to end with ``\\n`` (Prometheus
    rejects a page that does not: "unexpected end of input stream"); a page cut off in the
    middle of a line is a truncated answer, not a shorter one. Raises :class:`ValueError`.
    """
    text = body.decode("utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("the page does not end with a newline (truncated?)")
    return text


def _parse_value_and_timestamp(tail: str) -> float:
    """The value followed by an integer millisecond timestamp, which is checked and dropped."""
    fields = tail.split()
    if len(fields) != 2:
        raise ValueError("expected a value and an optional timestamp")
    int(fields[1])
    return float(fields[0])


def _parse_labels(
    text: str, key_cache: dict[tuple[str, ...], tuple[str, ...]]
) -> Mapping[str, str]:
    """Parse the text between ``{`` and ``}``: ``name="value"`` pairs, comma-separated."""
    if "\\" in text:
        return _parse_escaped_labels(text)
    # Without a backslash a value cannot hold a '"', so every '"' delimits a value: the
    # pieces alternate between key parts ('name=' / ',name=') and raw values. The key parts
    # (the "skeleton") repeat from line to line; each distinct one is checked once.
    parts = text.split('"')
    if len(parts) % 2 == 0:
        raise ValueError("malformed label set")
    skeleton = tuple(parts[0::2])
    names = key_cache.get(skeleton)
    if names is None:
        names = _label_names(skeleton)
        key_cache[skeleton] = names
    return dict(zip(names, parts[1::2], strict=True))


def _label_names(skeleton: tuple[str, ...]) -> tuple[str, ...]:
    """The label names of a skeleton (``('name=', ',other=', '')``), checked."""
    last = skeleton[-1].strip(" \t")
    if last and last != ",":
        raise ValueError("malformed label set")
    names: list[str] = []
    for i, key_part in enumerate(skeleton[:-1]):
        m = _LABEL_KEY.fullmatch(key_part)
        if m is None:
            # Not the text: it may hold a piece of a label value.
            raise ValueError("malformed label name")
        if (m.group(1) == ",") != (i > 0):
            raise ValueError("labels must be separated by one comma")
        name = m.group(2)
        if name in names:
            raise ValueError(f"duplicate label {name!r}")
        names.append(name)
    return tuple(names)


def _parse_escaped_labels(text: str) -> Mapping[str, str]:
    labels: dict[str, str] = {}
    pos, end = 0, len(text)
    while True:
        m = _ESCAPED_PAIR.match(text, pos)
        if m is None:
            raise ValueError("malformed label set")
        name = m.group(1)
        if name in labels:
            raise ValueError(f"duplicate label {name!r}")
        labels[name] = _ESCAPE.sub(_unescape, m.group(2))
        pos = m.end()
        if pos == end:
            return labels
        if text[pos] != ",":
            raise ValueError("labels must be separated by one comma")
        pos += 1
        if not text[pos:].strip(" \t"):
            return labels


def _unescape(m: re.Match[str]) -> str:
    try:
        return _UNESCAPED[m.group(1)]
    except KeyError:
        raise ValueError(f"invalid escape sequence {m.group(0)!r}") from None
