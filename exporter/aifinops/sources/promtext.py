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
from collections.abc import Mapping
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


def parse_text(text: str, wanted: frozenset[str] | None = None) -> list[Sample]:
    """Return the samples of ``text`` whose metric name is in ``wanted`` (``None``: all).

    Handles comments, blank lines, ``\\r\\n`` line ends, leading blanks, label values with the
    escapes ``\\\\``, ``\\"`` and ``\\n``, a trailing comma in a label set, metric names with
    colons (``vllm:num_requests_running``), ``NaN``/``+Inf``/``-Inf`` values and an optional
    integer timestamp (milliseconds; validated, then dropped).

    The label mappings are shared between samples of one call that have the same label
    string: treat them as read-only.

    Only lines with a wanted name are checked, so a malformed line of another metric does not
    fail the parse. A malformed wanted line raises :class:`ValueError` naming its line number
    (1-based).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    prefixes = tuple(wanted) if wanted is not None else None
    if prefixes == ():
        return []
    samples: list[Sample] = []
    label_cache: dict[str, Mapping[str, str]] = {}
    key_cache: dict[str, tuple[bool, str]] = {}
    names_ok: set[str] = set()
    for lineno, line in enumerate(text.split("\n"), 1):
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
                name = line[:brace].rstrip(" \t")
            if wanted is not None and name not in wanted:
                continue
            if name not in names_ok:
                if not _METRIC_NAME.fullmatch(name):
                    raise ValueError(f"invalid metric name {name!r}")
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
            samples.append((name, labels, value))
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}: {line[:200]!r}") from None
    return samples


def _parse_value_and_timestamp(tail: str) -> float:
    """The value followed by an integer millisecond timestamp, which is checked and dropped."""
    fields = tail.split()
    if len(fields) != 2:
        raise ValueError("expected a value and an optional timestamp")
    int(fields[1])
    return float(fields[0])


def _parse_labels(text: str, key_cache: dict[str, tuple[bool, str]]) -> Mapping[str, str]:
    """Parse the text between ``{`` and ``}``: ``name="value"`` pairs, comma-separated."""
    if "\\" in text:
        return _parse_escaped_labels(text)
    # Without a backslash a value cannot hold a '"', so every '"' delimits a value: the
    # pieces alternate between key parts ('name=' / ',name=') and raw values.
    parts = text.split('"')
    last = parts[-1].strip(" \t")
    if len(parts) % 2 == 0 or (last and last != ","):
        raise ValueError("malformed label set")
    labels: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        key_part = parts[i]
        key = key_cache.get(key_part)
        if key is None:
            m = _LABEL_KEY.fullmatch(key_part)
            if m is None:
                raise ValueError(f"malformed label name {key_part!r}")
            key = (m.group(1) == ",", m.group(2))
            key_cache[key_part] = key
        has_comma, name = key
        if has_comma != (i > 0):
            raise ValueError("labels must be separated by one comma")
        if name in labels:
            raise ValueError(f"duplicate label {name!r}")
        labels[name] = parts[i + 1]
    return labels


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
