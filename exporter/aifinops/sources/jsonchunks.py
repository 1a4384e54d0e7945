"""Decode a large JSON answer in pieces of whole members, each one short C call.

msgspec decodes a large OpenCost answer in one call that holds the GIL throughout; a scrape
that arrives meanwhile waits that long, even when the decode runs on a worker thread.
Cut into pieces of about :data:`PIECE_BYTES`, the same work yields the GIL between pieces.

Where to cut is found with a byte search for a marker that starts a member (``,{"metric":``
in a Prometheus vector, ``":{"name":"`` after an OpenCost allocation key), which a string
value cannot fake: inside a JSON string every ``"`` is escaped. The cuts are then proved, not
trusted: each piece is decoded as a complete object or array, and a piece can only decode if
it starts and ends at member boundaries (a JSON parser that starts at a member boundary reads
the same bytes the same way as the parser of the whole document would). Any piece that fails
makes the caller decode the whole body the ordinary way, so the result is always the one the
whole-body decode gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
Buffer = bytes | bytearray
B = TypeVar("B", bytes, bytearray)

PIECE_BYTES = 1 << 20


def member_spans(
    body: B,
    start: int,
    end: int,
    find_cut: Callable[[B, int, int], int],
    piece_bytes: int | None = None,
) -> list[tuple[int, int]]:
    """Spans ``(a, b)`` covering ``body[start:end]`` in order, cut at separating commas.

    ``find_cut(body, at, end)`` returns the index of the separating comma of the first member
    boundary at or after ``at``, or -1. Spans exclude the comma between them.
    """
    if piece_bytes is None:
        piece_bytes = PIECE_BYTES
    spans: list[tuple[int, int]] = []
    a = start
    while end - a > piece_bytes:
        cut = find_cut(body, a + piece_bytes, end)
        if cut == -1 or cut <= a:
            break
        spans.append((a, cut))
        a = cut + 1
    spans.append((a, end))
    return spans


def decode_pieces(
    body: bytes,
    prefix: bytes,
    suffix: bytes,
    find_cut: Callable[[bytes, int, int], int],
    decode_piece: Callable[[bytes], T],
    open_close: tuple[bytes, bytes],
) -> list[T] | None:
    """Decode the members between ``prefix`` and ``suffix`` piece by piece.

    ``body`` must start with ``prefix`` and end (after trailing whitespace) with ``suffix``;
    each piece is decoded as ``open + piece + close`` by ``decode_piece``. Returns ``None``
    when the body does not have that shape or any piece fails to decode (the caller then
    decodes the whole body).
    """
    if not body.startswith(prefix):
        return None
    end = len(body.rstrip()) - len(suffix)
    if end < len(prefix) or not body.endswith(suffix, 0, end + len(suffix)):
        return None
    opening, closing = open_close
    out: list[T] = []
    # Each piece copied once (a slice and two concatenations copied it three times).
    with memoryview(body) as view:
        for a, b in member_spans(body, len(prefix), end, find_cut):
            try:
                out.append(decode_piece(b"".join((opening, view[a:b], closing))))
            except ValueError:  # msgspec.DecodeError and ValidationError are ValueErrors
                return None
    return out


# --- streaming: pieces while the body arrives ----------------------------------------------


class Unsplittable(Exception):
    """The streamed document does not have the shape :class:`SetStream` cuts.

    ``early`` is true when nothing has been released yet (the prefix did not match): the
    caller still holds every byte and decodes the body whole. Otherwise pieces were already
    handed out and the bytes are gone; the caller must get the body again to decode it whole.
    """

    def __init__(self, message: str, *, early: bool) -> None:
        super().__init__(message)
        self.early = early


_PREFIX, _SET_START, _IN_SET, _AFTER_SET, _END = range(5)
# A set boundary is ``,{"``; searched as ``,{`` (then the quote checked): a needle ending in a
# quote makes bytes.find crawl through JSON, where quotes are everywhere (bench/README.md).
_NEW_SET = b",{"


class SetStream:
    """Cut a JSON document ``prefix SET (, SET)* ] }`` into pieces while it is received.

    ``prefix`` ends with the ``[`` of an array of sets; a set is ``null``, ``{}`` or an
    object whose members each start with ``"<key>`` followed by ``marker`` (OpenCost's
    allocation sets: ``":{"name":"``). :meth:`feed` and :meth:`close` return
    ``(set index, piece)`` pairs, where a piece is a complete JSON object holding whole
    members of one set, in document order, about :data:`PIECE_BYTES` each; empty sets yield
    nothing but count in :attr:`sets`. The document must be compact (no whitespace between
    tokens; trailing whitespace is fine), as Go's ``encoding/json`` writes it; anything else
    raises :class:`Unsplittable`. With ``one_set`` (an answer that holds one set), set
    boundaries are not looked for (a pass over every byte saved): a second set would leave
    a piece that does not decode.

    Why: a 44 MB answer then never exists whole in memory, and each piece is decoded in one
    short call while the rest is still arriving. How cuts are found, and why they need no
    trust: a set boundary is ``,{"`` followed by a key and ``marker``, a member boundary is
    ``,"`` before a key followed by ``marker``; a quote inside a JSON string is always
    escaped, so string contents cannot fake them. And whatever the cuts, every byte ends up
    either in a piece, which the caller must decode as one whole JSON object, or in the
    structure checked here (the ``}``, ``,null``, ``,`` between sets); a cut in the wrong
    place (a ``marker`` inside some nested object, say) leaves a piece that does not decode,
    which the caller treats as :class:`Unsplittable`. Nothing wrong passes silently.
    """

    def __init__(
        self,
        prefix: bytes,
        marker: bytes,
        piece_bytes: int | None = None,
        *,
        one_set: bool = False,
    ) -> None:
        self._prefix = prefix
        self._one_set = one_set
        self._marker = marker
        self._piece = PIECE_BYTES if piece_bytes is None else piece_bytes
        self._buf = bytearray()
        self._pos = 0  # first byte not yet consumed (outside a set) or the set's first member
        self._scan = 0  # where to look for the next set boundary
        self._state = _PREFIX
        self._set = 0  # index of the set being read (or next to read)
        self._sets = 0

    @property
    def sets(self) -> int:
        """How many sets the document held (complete after :meth:`close`)."""
        return self._sets

    @property
    def started(self) -> bool:
        """Whether the prefix matched (from then on bytes are released as pieces)."""
        return self._state != _PREFIX

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Take the next bytes of the body; the pieces now complete."""
        self._buf += chunk
        out: list[tuple[int, bytes]] = []
        self._advance(out)
        if self._pos > self._piece:
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        return out

    def close(self) -> list[tuple[int, bytes]]:
        """The body is complete: the last pieces. Raises :class:`Unsplittable` when the
        document ended anywhere but after its closing ``]}``."""
        out: list[tuple[int, bytes]] = []
        self._advance(out)
        buf = self._buf
        if self._state == _IN_SET:
            end = len(buf.rstrip()) - 2
            if end < self._pos or buf[end : end + 2] != b"]}":
                raise self._error("the document does not end with ]}")
            rows_end, empty = self._set_close(end, self._pos)
            if rows_end < 0:
                raise self._error("the last set is not closed")
            self._emit(out, rows_end)
            self._set += 1 + empty
            self._sets = self._set
        elif self._state == _END:
            if bytes(buf[self._pos :]).strip() != b"}":
                raise self._error("the document does not end with ]}")
        else:
            raise self._error("the document ended early")
        return out

    # --- internals ---------------------------------------------------------------------

    def _error(self, message: str) -> Unsplittable:
        return Unsplittable(message, early=self._state == _PREFIX)

    def _advance(self, out: list[tuple[int, bytes]]) -> None:
        buf = self._buf
        while True:
            if self._state == _PREFIX:
                n = len(self._prefix)
                if len(buf) < n:
                    if not self._prefix.startswith(bytes(buf)):
                        raise self._error("another prefix")
                    return
                if buf[:n] != self._prefix:
                    raise self._error("another prefix")
                self._pos = n
                self._state = _SET_START
            elif self._state == _SET_START:
                head = bytes(buf[self._pos : self._pos + 4])
                if not head:
                    return
                if head[:1] == b"]" and self._set == 0:
                    self._pos += 1
                    self._state = _END
                elif head[:1] == b"n" or head[:2] == b"{}":
                    size = 4 if head[:1] == b"n" else 2
                    if len(head) < size:
                        return
                    if head[:size] not in (b"null", b"{}"):
                        raise self._error("a set is neither null nor an object")
                    self._pos += size
                    self._sets = self._set + 1
                    self._state = _AFTER_SET
                elif head[:2] == b'{"':
                    self._pos += 1
                    self._scan = self._pos
                    self._state = _IN_SET
                elif len(head) < 2 and head == b"{":
                    return
                else:
                    raise self._error("a set is neither null nor an object")
            elif self._state == _AFTER_SET:
                if len(buf) <= self._pos:
                    return
                c = buf[self._pos]
                self._pos += 1
                if c == ord(","):
                    self._set += 1
                    self._state = _SET_START
                elif c == ord("]"):
                    self._state = _END
                else:
                    raise self._error("sets are not separated by commas")
            elif self._state == _IN_SET:
                if not self._in_set(out):
                    return
            else:  # _END: the rest is checked by close()
                return

    def _in_set(self, out: list[tuple[int, bytes]]) -> bool:
        """Release what is complete in the current set; True when a new set began."""
        buf = self._buf
        while not self._one_set and (b := buf.find(_NEW_SET, self._scan)) != -1:
            key = b + 2
            if key >= len(buf):
                self._scan = b  # is a quote next? look again with more bytes
                break
            if buf[key] != ord('"'):
                self._scan = b + 1
                continue
            m = buf.find(self._marker, key + 1)
            if m == -1:
                self._scan = b  # the key is not complete yet: look again with more bytes
                break
            rows_end, empty = self._set_close(b, self._pos)
            if buf.rfind(b'"', key + 1, m) != -1 or rows_end < 0:
                self._scan = b + 1  # not a set boundary (a key with quotes, or nested)
                continue
            self._emit(out, rows_end)
            self._set += 1 + empty
            self._sets = self._set
            self._pos = self._scan = key
            return True
        else:
            self._scan = max(self._scan, len(buf) - len(_NEW_SET), self._pos)
        # No set boundary before the end of what arrived: cut whole members off the front.
        while len(buf) - self._pos > self._piece:
            cut = self._member_cut(buf, self._pos + self._piece, len(buf))
            if cut <= self._pos:
                break
            out.append((self._set, self._piece_bytes(self._pos, cut)))
            self._pos = cut + 1
        return False

    def _member_cut(self, body: Buffer, at: int, end: int) -> int:
        """The comma before the first member key whose ``marker`` starts at or after ``at``
        (and before ``end``); -1 when there is none yet."""
        while (m := body.find(self._marker, at, end)) != -1:
            cut = body.rfind(b',"', at, m)
            if cut != -1:
                return cut
            at = m + 1  # ``at`` fell inside this member's key: take the next member
        return -1

    def _set_close(self, comma: int, start: int) -> tuple[int, int]:
        """Read back from the ``,`` (or ``]``) at ``comma`` over ``}`` ``(,null|,{})*``: the
        end of the set's members and the number of empty sets in between; (-1, 0) when the
        bytes are not that."""
        buf = self._buf
        i = comma - 1
        empty = 0
        while True:
            if i - 4 >= start and buf[i - 4 : i + 1] == b",null":
                i -= 5
            elif i - 2 >= start and buf[i - 2 : i + 1] == b",{}":
                i -= 3
            else:
                break
            empty += 1
        if i <= start or buf[i] != ord("}") or buf[i - 1] != ord("}"):
            return -1, 0
        return i, empty

    def _emit(self, out: list[tuple[int, bytes]], rows_end: int) -> None:
        """The members ``[pos, rows_end)`` of the current set, in pieces."""
        spans = member_spans(self._buf, self._pos, rows_end, self._member_cut, self._piece)
        for a, b in spans:
            out.append((self._set, self._piece_bytes(a, b)))

    def _piece_bytes(self, a: int, b: int) -> bytes:
        """``{`` + the members in ``[a, b)`` + ``}``, copied once."""
        with memoryview(self._buf) as view:
            return b"".join((b"{", view[a:b], b"}"))
