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

For a page read again and again (a scrape target), :class:`SeriesReader` goes further: it
gives the same samples as ``parse_text`` but parses a series only the first time it appears;
later reads check the page against the series expected and read only the values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from types import MappingProxyType
from typing import Generic, TypeAlias, TypeVar, cast

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


# --- Reading the same page refresh after refresh -------------------------------------------

READ_CHUNK_BYTES = 1 << 18
"""The span of a page :class:`SeriesReader` handles in one go: it is tested for a wanted
name (a span without one is skipped), and checked and read at once when its lines are the
series expected. Each C call stays well under a millisecond (the reader runs on the CPU
worker thread, where a long call would hold the GIL and stall the event loop)."""

# A sample line's value, from its last blank to its end (the '\n' included).
_VALUE_AT_END = re.compile(rb" ([^ \n]*\n)")
# Lines in a row that must come as expected before a span is tried whole again.
_RESUME_AFTER = 8


class SeriesEntry:
    """Base of what a :class:`SeriesReader` keeps per series. The reader's own fields:
    ``_prefix``, the series' line up to its value (``name{labels} ``, as bytes; ``None``
    when that text does not fix the series), and ``_pos``, its index in the last read."""

    __slots__ = ("_pos", "_prefix")

    def __init__(self) -> None:
        self._prefix: bytes | None = None
        self._pos = -1


E = TypeVar("E", bound=SeriesEntry)


class SeriesReader(Generic[E]):
    """Reads one scrape target's page again and again, doing the work per *series* once.

    The page of a LiteLLM proxy at fleet scale holds a hundred thousand counter lines and more
    (bench/README.md), and the next scrape brings back the same series, in the same order, with new
    values. The reader keeps per series the bytes of its line before the value (its *prefix*) and an
    entry the caller derives once from the parsed name and labels. A span of the page is read whole
    when it is exactly the prefixes expected next, each followed by one value token: one regex call
    finds the tokens, one ``join`` and one ``startswith`` prove the span is those lines, and
    ``map(float, ...)`` reads the values. Elsewhere lines are taken one by one: compared with the
    prefix expected next, else looked up by prefix; only a series never seen before is parsed. The
    entries are those of the last read (series gone from the page are dropped), so memory follows
    the page.

    :meth:`read` gives what ``parse_text(decode_page(body), wanted)`` gives — the same
    samples in the same order, and the same :class:`ValueError` for a bad page — with each
    sample's labels replaced by its entry.
    """

    __slots__ = ("_dirty", "_entries", "_names", "_order", "_prefixes", "_wanted")

    def __init__(self, wanted: frozenset[str]) -> None:
        self._wanted = wanted
        self._names = tuple(n.encode() for n in wanted if n)
        self._entries: dict[bytes, E] = {}
        self._order: list[E] = []
        self._prefixes: list[bytes | None] = []
        self._dirty = False

    def __len__(self) -> int:
        """Series known from the last read."""
        return len(self._entries)

    def read(
        self, body: bytes, derive: Callable[[str, Mapping[str, str]], E]
    ) -> tuple[list[E], list[float]]:
        """The entries and values of every wanted sample of ``body`` (a ``/metrics`` body),
        in page order. ``derive(name, labels)`` makes the entry of a series met for the
        first time; labels are shared between the samples of one read that have the same
        label text, so ``derive`` may memoize on them. Raises :class:`ValueError` like
        :func:`decode_page` and :func:`parse_text`.

        The entry list is kept as the order expected next time: do not change it. When the
        series are those of the last read, in the same order, it is the last read's list
        (the same object), so a caller may keep work that depends only on the series."""
        if body and not body.endswith(b"\n"):
            decode_page(body)  # raises: truncated, or not UTF-8
        if not body.isascii():  # one C call, ~2 ms at 34 MB; most pages are ASCII
            _check_utf8(body)
        if b"\r" in body:
            body = _without_cr(body)
        try:
            entries, values, new, unkept = self._read(body, derive)
        except BaseException:
            self._dirty = True  # entries learned before the failure: drop them next time
            raise
        if new or self._dirty or entries != self._order:
            keep: set[int] = set()
            for i in range(0, len(entries), 4096):  # short C calls (see READ_CHUNK_BYTES)
                keep.update(map(id, entries[i : i + 4096]))
            # Entries of `_entries` this read met, counted without those never kept there.
            if len(keep) - unkept != len(self._entries):  # series went away
                self._entries = {k: e for k, e in self._entries.items() if id(e) in keep}
            for i, e in enumerate(entries):
                e._pos = i
            self._prefixes = [e._prefix for e in entries]
            self._dirty = False
            self._order = entries
        return self._order, values

    def _read(
        self, body: bytes, derive: Callable[[str, Mapping[str, str]], E]
    ) -> tuple[list[E], list[float], int, int]:
        """The entries and values, how many entries were derived, and how many of those
        were not kept (their prefix does not fix the series)."""
        known = self._entries
        order = self._order
        prefixes = self._prefixes
        expected = len(order)
        names = self._names
        out: list[E] = []
        values: list[float] = []
        add = out.append
        add_value = values.append
        find = body.find
        startswith = body.startswith
        tokens_of = _VALUE_AT_END.findall
        parser: _LineParser | None = None
        new = unkept = 0
        k = 0  # index in `order` of the series expected next
        pos, size = 0, len(body)
        while pos < size:
            cut = body.rfind(b"\n", pos, pos + READ_CHUNK_BYTES) + 1
            if cut <= pos:  # one line longer than a span
                cut = find(b"\n", pos + READ_CHUNK_BYTES) + 1
            resume = True  # go back to whole spans once lines run as expected
            if k < expected and (first := prefixes[k]) is not None and startswith(first, pos):
                tokens = tokens_of(body, pos, cut)
                n = len(tokens)
                # Fewer prefixes than tokens make a shorter span; a None (a series without
                # a prefix) makes join raise TypeError.
                ahead = cast("list[bytes]", prefixes[k : k + n])
                try:
                    span = b"".join(chain.from_iterable(zip(ahead, tokens, strict=False)))
                except TypeError:
                    span = b""
                # The span is exactly those lines: each an expected prefix, then one token.
                if len(span) == cut - pos and startswith(span, pos):
                    rest = b"".join(tokens)
                    if b"_" not in rest:
                        try:
                            read = list(map(float, tokens))
                        except ValueError:
                            pass
                        else:
                            out += order[k : k + n]
                            values += read
                            k += n
                            pos = cut
                            continue
                resume = False  # the span is not as expected: line by line to its end
            elif not any(find(n, pos, cut) != -1 for n in names):
                pos = cut
                continue
            in_a_row = 0
            while pos < cut:
                end = find(b"\n", pos)
                if k < expected:
                    prefix = prefixes[k]
                    if prefix is not None and startswith(prefix, pos):
                        text = body[pos + len(prefix) : end]
                        if b"_" not in text:
                            try:
                                value = float(text)
                            except ValueError:
                                pass  # e.g. a timestamp after a tab: the full parse decides
                            else:
                                add(order[k])
                                add_value(value)
                                k += 1
                                pos = end + 1
                                in_a_row += 1
                                if resume and in_a_row >= _RESUME_AFTER:
                                    break
                                continue
                in_a_row = 0
                # Not the series expected: look its prefix up, or parse the line.
                line = body[pos:end]
                head, blank, text = line.rpartition(b" ")
                prefix = head + blank
                found = known.get(prefix) if blank else None
                if found is not None and b"_" not in text:
                    try:
                        value = float(text)
                    except ValueError:
                        pass
                    else:
                        add(found)
                        add_value(value)
                        k = found._pos + 1
                        pos = end + 1
                        continue
                if parser is None:
                    parser = _LineParser(self._wanted)
                try:
                    sample = parser.parse(line.decode())
                except ValueError as exc:
                    lineno = body.count(b"\n", 0, pos) + 1
                    raise ValueError(f"line {lineno}: {exc}") from None
                pos = end + 1
                if sample is None:
                    continue
                name, labels, value = sample
                if found is None:
                    new += 1
                    found = derive(name, labels)
                    # A prefix is kept only where it fixes name and labels: it ends at the
                    # label set's '}' (a value cannot hold one), or it is the bare name.
                    if head.endswith(b"}") or head == name.encode():
                        found._prefix = prefix
                        known[prefix] = found
                    else:
                        unkept += 1
                else:
                    k = found._pos + 1
                add(found)
                add_value(value)
        return out, values, new, unkept


def _spans(body: bytes) -> Iterator[tuple[int, int]]:
    """``body`` cut after a '\\n' about every :data:`READ_CHUNK_BYTES`."""
    pos, size = 0, len(body)
    while pos < size:
        cut = body.rfind(b"\n", pos, pos + READ_CHUNK_BYTES) + 1
        if cut <= pos:
            cut = body.find(b"\n", pos + READ_CHUNK_BYTES) + 1 or size
        yield pos, cut
        pos = cut


def _without_cr(body: bytes) -> bytes:
    """``body`` with '\\r\\n' line ends made '\\n' (as :func:`parse_text` does), a span at a
    time: a span ends after a '\\n', so no '\\r\\n' is cut in two."""
    return b"".join([body[a:b].replace(b"\r\n", b"\n") for a, b in _spans(body)])


def _check_utf8(body: bytes) -> None:
    """Raise :func:`decode_page`'s error when ``body`` is not UTF-8, without holding the
    page as text (a span cut after a '\n' never splits a character)."""
    view = memoryview(body)
    for a, b in _spans(body):
        try:
            str(view[a:b], "utf-8")
        except UnicodeDecodeError:
            decode_page(body)  # the whole page's error, as parse_text's callers see it
            raise


class _LineParser:
    """:func:`parse_text`'s reading of one line, for :class:`SeriesReader`'s new series:
    the same checks and messages (without the ``line N:`` prefix). Label sets are parsed once
    per label text within one read."""

    __slots__ = ("keys", "labels", "names_ok", "prefixes", "wanted")

    def __init__(self, wanted: frozenset[str]) -> None:
        self.wanted = wanted
        self.prefixes = tuple(wanted)
        self.labels: dict[str, Mapping[str, str]] = {}
        self.keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.names_ok: set[str] = set()

    def parse(self, line: str) -> Sample | None:
        """The line's sample; ``None`` for a blank, a comment or an unwanted metric."""
        if not line:
            return None
        first = line[0]
        if first == "#":
            return None
        if first == " " or first == "\t":
            line = line.strip(" \t")
            if not line or line[0] == "#":
                return None
        if not line.startswith(self.prefixes):
            return None
        name = ""
        try:
            brace = line.find("{")
            if brace == -1:
                name, _, tail = line.replace("\t", " ").partition(" ")
            else:
                name = line[:brace]
                if name[-1:] in (" ", "\t"):
                    name = name.rstrip(" \t")
            if name not in self.names_ok:
                if name not in self.wanted:
                    return None
                if not _METRIC_NAME.fullmatch(name):
                    raise ValueError(f"invalid metric name {name[:40]!r}")
                self.names_ok.add(name)
            if brace == -1:
                labels: Mapping[str, str] = _NO_LABELS
            else:
                close = line.rfind("}")
                if close < brace:
                    raise ValueError("label set without a closing '}'")
                label_text = line[brace + 1 : close]
                cached = self.labels.get(label_text)
                if cached is None:
                    cached = _parse_labels(label_text, self.keys)
                    self.labels[label_text] = cached
                labels = cached
                tail = line[close + 1 :]
            if "_" in tail:
                raise ValueError("invalid value")
            try:
                value = float(tail)
            except ValueError:
                value = _parse_value_and_timestamp(tail)
        except ValueError as exc:
            where = f" in a {name!r} sample" if name in self.names_ok else ""
            raise ValueError(f"{exc}{where}") from None
        return name, labels, value
