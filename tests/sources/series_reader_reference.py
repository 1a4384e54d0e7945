"""The token scrape's :class:`SeriesReader` as it was before issue 16 (each series' line prefix
kept as the index key, whole spans proven by joining the expected prefixes): the oracle the
new reader is compared with (tests/sources/test_tokens_fastpath.py). Not used by the exporter."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Generic, TypeVar, cast

from aifinops.sources.promtext import (
    _METRIC_NAME,
    _NO_LABELS,
    Sample,
    _check_utf8,
    _parse_labels,
    _parse_value_and_timestamp,
    _spans,
    decode_page,
)


def _without_cr(body: bytes) -> bytes:
    """``body`` with '\\r\\n' line ends made '\\n', a span at a time (the old reader's way;
    the streamed reader handles line ends span by span itself)."""
    return b"".join([body[a:b].replace(b"\r\n", b"\n") for a, b in _spans(body)])


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
