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

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import compress
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
"""The span of a page :class:`SeriesReader` handles in one go (a few C calls over its lines).
Each C call stays well under a millisecond (the reader runs on the CPU worker thread, where a
long call would hold the GIL and stall the event loop)."""

# Every line of a span: its text up to and including the last blank (the series part, empty
# when the line has no blank), then the rest (the value). Always matches, line after line.
_LINE = re.compile(rb"([^\n]* )?([^ \n]*)\n")
# What an index entry of a line that never gives a sample (a comment, an unwanted metric) is.
_IGNORED: object = object()


class SeriesEntry:
    """Base of what a :class:`SeriesReader` keeps per series. The reader's own field:
    ``_key``, the index key of the series' line up to its value (``None`` when that text
    does not fix the series)."""

    __slots__ = ("_key",)

    def __init__(self) -> None:
        self._key: int | None = None


E = TypeVar("E", bound=SeriesEntry)
Derive: TypeAlias = Callable[[str, tuple[str, ...], tuple[str, ...]], E]
"""``derive(name, label names, label values)`` → the entry of a series met for the first
time. The names tuple is one object per distinct label-name sequence within a read."""


class SeriesReader(Generic[E]):
    """Reads one scrape target's page again and again, doing the work per *series* once.

    The page of a LiteLLM proxy at fleet scale holds a hundred thousand counter lines and
    more, and the next scrape brings back the same series with new values. The reader keeps
    an index from a 64-bit key of each line's series part (the bytes before the value: the
    keyed ``hash`` of those bytes, never the bytes themselves, which would hold tens of MB) to
    an entry the caller derives once from the parsed name and labels. A read cuts each span
    of the page into (series part, value) pairs with one regex call, looks every key up with
    ``map`` and reads the values with ``map(float, ...)``; only a line whose key is unknown
    (a new series, a comment, an odd line) is parsed. A span without a wanted name is skipped
    whole (other metrics' lines cost a few searches, and no index key); other lines that
    never give a sample (comments, unwanted metrics) are remembered as such. The index holds
    the keys of the last read that added one, so memory follows the page.

    :meth:`read` gives what ``parse_text(decode_page(body), wanted)`` gives — the same
    samples in the same order, and the same :class:`ValueError` for a bad page — with each
    sample's labels replaced by its entry. A key stands for its bytes: two different series
    parts with equal keys (a 2**-64 chance per pair, the hash keyed per process) would read
    as one series.
    """

    __slots__ = ("_dirty", "_entries", "_names", "_order", "_parser", "_reading", "_wanted")

    def __init__(self, wanted: frozenset[str]) -> None:
        self._wanted = wanted
        self._entries: dict[int, object] = {}  # key -> entry, or _IGNORED
        self._order: list[E] = []
        self._parser = _RowParser(wanted)
        self._names = tuple(n.encode() for n in wanted if n)
        self._dirty = False
        self._reading: PageRead[E] | None = None  # a streamed read begun, not finished

    def __len__(self) -> int:
        """Series known from the last read."""
        return sum(1 for e in self._entries.values() if e is not _IGNORED)

    def read(
        self, body: bytes, derive: Callable[[str, Mapping[str, str]], E]
    ) -> tuple[list[E], list[float]]:
        """:meth:`read_rows` with ``derive(name, labels)``: labels are shared between the
        samples of one read that have the same label text, so ``derive`` may memoize on them
        (the DCGM and energy readers' form)."""
        shared: dict[tuple[tuple[str, ...], tuple[str, ...]], Mapping[str, str]] = {}

        def row(name: str, names: tuple[str, ...], values: tuple[str, ...]) -> E:
            if not names:
                return derive(name, _NO_LABELS)
            labels = shared.get((names, values))
            if labels is None:
                labels = shared[(names, values)] = dict(zip(names, values, strict=True))
            return derive(name, labels)

        return self.read_rows(body, row)

    def read_rows(self, body: bytes, derive: Derive[E]) -> tuple[list[E], list[float]]:
        """The entries and values of every wanted sample of ``body`` (a ``/metrics`` body),
        in page order. ``derive`` makes the entry of a series met for the first time. Raises
        :class:`ValueError` like :func:`decode_page` and :func:`parse_text`.

        The entry list is kept as the order expected next time: do not change it. When the
        series are those of the last read, in the same order, it is the last read's list
        (the same object), so a caller may keep work that depends only on the series."""
        if body and not body.endswith(b"\n"):
            decode_page(body)  # raises: truncated, or not UTF-8
        if not body.isascii():  # one C call, ~2 ms at 34 MB; most pages are ASCII
            _check_utf8(body)
        page = PageRead(self, derive, checked=True)
        page.feed(body)
        return page.finish()

    def stream(self, derive: Derive[E]) -> PageRead[E]:
        """A read of a page fed in pieces as it arrives (:class:`PageRead`): what
        :meth:`read_rows` gives for the whole page, without the page held whole."""
        return PageRead(self, derive)

    def _begin(self, page: PageRead[E]) -> None:
        """``page`` is the read in progress: an earlier one left unfinished (its body failed
        or was cancelled mid-way) forgets the keys it learned, as if it never began."""
        if self._reading is not page:
            if self._reading is not None:
                self._abandon(self._reading)
            self._reading = page

    def _abandon(self, page: PageRead[E]) -> None:
        """Forget what the unfinished read ``page`` added to the index (it is the read in
        progress): a page that fails before its end leaves the reader as it found it."""
        if self._reading is page:
            entries = self._entries
            for key in page.learned:
                entries.pop(key, None)
            self._reading = None

    def _commit(self, page: PageRead[E]) -> tuple[list[E], list[float]]:
        self._reading = None
        entries = page.out
        if page.added or self._dirty or entries != self._order:
            # Rebuilt from this read alone: series gone from the page are forgotten.
            index: dict[int, object] = dict.fromkeys(page.ignored, _IGNORED)
            index.update((e._key, e) for e in entries if e._key is not None)
            self._entries = index
            self._order = entries
            self._dirty = False
        return self._order, page.values

    def _span(
        self,
        body: bytes,
        pos: int,
        cut: int,
        page: PageRead[E],
    ) -> tuple[bool, int]:
        """Read the lines of ``body[pos:cut]`` into ``page``: whether anything was added to
        the index (a new series or a new ignored line), and the span's line count when it
        was split into lines (-1: skipped whole)."""
        if not any(body.find(n, pos, cut) != -1 for n in self._names):
            return False, -1  # no wanted name anywhere: no sample, nothing to index
        get = self._entries.get
        out, values, ignored = page.out, page.values, page.ignored
        pairs = _LINE.findall(body, pos, cut)
        heads, tokens = zip(*pairs, strict=True)
        keys = list(map(hash, heads))
        found = list(map(get, keys))
        if None not in found:
            if _IGNORED in found:
                keep = [f is not _IGNORED for f in found]
                ignored += compress(keys, map(operator.not_, keep))
                found = list(compress(found, keep))
                tokens = tuple(compress(tokens, keep))
            if b"_" not in b"".join(tokens):
                try:
                    read = list(map(float, tokens))
                except ValueError:
                    pass
                else:
                    out += cast("list[E]", found)
                    values += read
                    return False, len(pairs)
            found = list(map(get, keys))  # the ignored ones back: line by line
        return self._lines(body, pos, pairs, keys, found, page), len(pairs)

    def _lines(
        self,
        body: bytes,
        pos: int,
        pairs: list[tuple[bytes, bytes]],
        keys: list[int],
        found: list[object | None],
        page: PageRead[E],
    ) -> bool:
        """One span line by line from ``pos``: a known series whose value reads as a plain
        float is taken as is; any other line is parsed in full (a new series is derived)."""
        known = self._entries
        parser = self._parser
        first = pos
        derive, out, values = page.derive, page.out, page.values
        ignored, learned = page.ignored, page.learned
        added = False
        for (head, token), key, entry in zip(pairs, keys, found, strict=True):
            start = pos
            pos += len(head) + len(token) + 1
            if entry is _IGNORED:
                ignored.append(key)
                continue
            if entry is not None and b"_" not in token:
                try:
                    value = float(token)
                except ValueError:
                    pass  # e.g. a timestamp after a tab: the full parse decides
                else:
                    out.append(cast("E", entry))
                    values.append(value)
                    continue
            if entry is None:
                # Never a sample whatever its value: a comment, or a name no wanted name
                # starts (decided by the series part alone: no parse needed).
                text = head.lstrip(b" \t")
                if text and (text.startswith(b"#") or not text.startswith(parser.bnames)):
                    known[key] = _IGNORED
                    learned.append(key)
                    ignored.append(key)
                    added = True
                    continue
            row = parser.simple(head, token)
            if row is None:
                try:
                    row = parser.parse(body[start : pos - 1].decode())
                except ValueError as exc:
                    lineno = page.lines + body.count(b"\n", first, start) + 1
                    raise ValueError(f"line {lineno}: {exc}") from None
            if row is None:
                # A longer name than a wanted one: when its '{' is in the series part, the
                # name is, whatever the value (a blank line or a bare name: parsed again).
                if (
                    entry is None
                    and (brace := text.find(b"{")) != -1
                    and text[:brace].rstrip(b" \t").decode() not in parser.wanted
                ):
                    known[key] = _IGNORED
                    learned.append(key)
                    ignored.append(key)
                    added = True
                continue
            name, names, label_values, value = row
            if entry is None:
                entry = derive(name, names, label_values)
                # A key is kept only where the series part fixes name and labels: it ends at
                # the label set's '}' (a value cannot hold one), or it is the bare name.
                if head.endswith(b"} ") or head == name.encode() + b" ":
                    entry._key = key
                    known[key] = entry
                    learned.append(key)
                    added = True
            out.append(cast("E", entry))
            values.append(value)
        return added


class PageRead(Generic[E]):
    """One read of a page by a :class:`SeriesReader`, fed in pieces as the body arrives
    (:meth:`SeriesReader.stream`), so a large page is never held whole.

    Each piece is cut into the spans :meth:`SeriesReader.read_rows` would cut the whole page
    into (a span ends after the last '\\n' within :data:`READ_CHUNK_BYTES` of its start), the
    rest carried to the next piece: the spans, and so the read, are the same whatever the
    pieces. Checks on the page as a whole (UTF-8, the final newline) are made span by span
    as the spans come. A read that fails, or that is never finished (the body broke off),
    leaves the reader as it was before it; one that fails on a line does what
    :meth:`~SeriesReader.read_rows` does (the next read rebuilds the index)."""

    __slots__ = (
        "added",
        "checked",
        "cr",
        "derive",
        "ignored",
        "learned",
        "lines",
        "offset",
        "out",
        "reader",
        "tail",
        "values",
    )

    def __init__(self, reader: SeriesReader[E], derive: Derive[E], *, checked: bool = False):
        self.reader = reader
        self.derive = derive
        self.checked = checked  # UTF-8 already checked (a whole page)
        self.out: list[E] = []
        self.values: list[float] = []
        self.ignored: list[int] = []
        self.learned: list[int] = []  # keys this read put in the reader's index
        self.added = False
        self.tail = b""  # the page from the end of the last span read
        self.cr = False  # a '\r' held back: the first half of a '\r\n' cut in two?
        self.lines = 0  # '\n' before the span being read (error messages)
        self.offset = 0  # bytes before ``tail``, '\r\n' counted as one (error messages)

    def feed(self, data: bytes) -> None:
        """The next piece of the page: its complete spans are read, the rest kept."""
        self.reader._begin(self)
        if self.cr:
            data = b"\r" + data
            self.cr = False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data = data[:-1]
                self.cr = True
            data = data.replace(b"\r\n", b"\n")
        buf = self.tail + data if self.tail else data
        stop = self._spans(buf, final=False)
        self.offset += stop
        self.tail = buf[stop:]

    def finish(self) -> tuple[list[E], list[float]]:
        """The page has ended: :meth:`SeriesReader.read_rows`'s answer for the whole of it."""
        self.reader._begin(self)
        buf = self.tail + b"\r" if self.cr else self.tail
        self.tail, self.cr = b"", False
        if buf and not buf.endswith(b"\n"):
            self._check(buf, 0, len(buf))
            self.reader._abandon(self)
            raise ValueError("the page does not end with a newline (truncated?)")
        self._spans(buf, final=True)
        return self.reader._commit(self)

    def _spans(self, buf: bytes, *, final: bool) -> int:
        """Read the spans of ``buf`` that are complete; where the first one not read starts."""
        reader = self.reader
        chunk = READ_CHUNK_BYTES
        check = not self.checked and not buf.isascii()
        pos, size = 0, len(buf)
        while pos < size:
            end = pos + chunk
            if end > size and not final:
                break  # where this span ends depends on what comes next
            cut = buf.rfind(b"\n", pos, end) + 1
            if cut <= pos:  # one line longer than a span
                cut = buf.find(b"\n", end) + 1
                if cut <= 0:
                    if not final:
                        break
                    cut = size
            if check:
                self._check(buf, pos, cut)
            try:
                added, lines = reader._span(buf, pos, cut, self)
            except BaseException:
                # As read_rows: keys learned before the failure dropped at the next read.
                reader._dirty = True
                reader._reading = None
                raise
            self.added |= added
            self.lines += lines if lines >= 0 else buf.count(b"\n", pos, cut)
            pos = cut
        return pos

    def _check(self, buf: bytes, pos: int, cut: int) -> None:
        """:func:`decode_page`'s UTF-8 error for ``buf[pos:cut]``, placed in the page."""
        try:
            str(memoryview(buf)[pos:cut], "utf-8")
        except UnicodeDecodeError as exc:
            self.reader._abandon(self)
            at = self.offset + pos
            if exc.end == exc.start + 1:
                what = f"byte 0x{exc.object[exc.start]:02x} in position {at + exc.start}"
            else:
                what = f"bytes in position {at + exc.start}-{at + exc.end - 1}"
            raise ValueError(f"'{exc.encoding}' codec can't decode {what}: {exc.reason}") from None


def _spans(body: bytes) -> Iterator[tuple[int, int]]:
    """``body`` cut after a '\\n' about every :data:`READ_CHUNK_BYTES`."""
    pos, size = 0, len(body)
    while pos < size:
        cut = body.rfind(b"\n", pos, pos + READ_CHUNK_BYTES) + 1
        if cut <= pos:
            cut = body.find(b"\n", pos + READ_CHUNK_BYTES) + 1 or size
        yield pos, cut
        pos = cut


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


Row: TypeAlias = tuple[str, tuple[str, ...], tuple[str, ...], float]
"""(metric name, label names, label values, value)."""


class _RowParser:
    """:func:`parse_text`'s reading of one line for :class:`SeriesReader`'s new series, with
    the same checks and messages (without the ``line N:`` prefix), giving the labels as two
    tuples, not a dict per label set (a first read meets a hundred thousand). One per reader:
    it keeps the label-name tuples of the label skeletons seen (a handful per page)."""

    __slots__ = ("bnames", "keys", "names_ok", "prefixes", "tuples", "wanted")

    def __init__(self, wanted: frozenset[str]) -> None:
        self.wanted = wanted
        self.prefixes = tuple(wanted)
        self.bnames = tuple(n.encode() for n in wanted)
        self.keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.names_ok: set[str] = set()

    def parse(self, line: str) -> Row | None:
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
                names: tuple[str, ...] = ()
                values: tuple[str, ...] = ()
            else:
                close = line.rfind("}")
                if close < brace:
                    raise ValueError("label set without a closing '}'")
                names, values = self._labels(line[brace + 1 : close])
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
        return name, names, values, value

    def simple(self, head: bytes, token: bytes) -> Row | None:
        """The sample of a line of the usual shape (``name{labels} value``) given as its
        text up to the last blank and the rest, or ``None`` where :meth:`parse` must decide
        (another shape, an unwanted name, a label set or value it may refuse: it gives the
        error's message)."""
        if not head.endswith(b"} ") or b"}" in token or b"_" in token:
            return None
        text = head.decode()
        brace = text.find("{")
        name = text[:brace]
        if name not in self.names_ok:
            if name not in self.wanted or not _METRIC_NAME.fullmatch(name):
                return None
            self.names_ok.add(name)
        try:
            names, values = self._labels(text[brace + 1 : -2])
            return name, names, values, float(token)
        except ValueError:
            return None

    def _labels(self, text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """:func:`_parse_labels` as (names, values); names one tuple object per sequence."""
        if "\\" in text:
            labels = _parse_escaped_labels(text)
            names = tuple(labels)
            if len(self.tuples) > _MAX_SKELETONS:
                self.keys.clear()
                self.tuples.clear()
            return self.tuples.setdefault(names, names), tuple(labels.values())
        parts = text.split('"')
        if len(parts) % 2 == 0:
            raise ValueError("malformed label set")
        skeleton = tuple(parts[0::2])
        names = self.keys.get(skeleton)  # type: ignore[assignment]
        if names is None:
            if len(self.keys) > _MAX_SKELETONS:  # hostile pages: the memo stays bounded
                self.keys.clear()
                self.tuples.clear()
            names = _label_names(skeleton)
            names = self.tuples.setdefault(names, names)
            self.keys[skeleton] = names
        return names, tuple(parts[1::2])


_MAX_SKELETONS = 4096
