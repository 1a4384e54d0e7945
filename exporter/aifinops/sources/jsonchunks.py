"""Decode a large JSON answer in pieces of whole members, each one short C call.

msgspec decodes a 44 MB OpenCost answer in one call that holds the GIL for 100–300 ms; a
scrape that arrives meanwhile waits that long, even when the decode runs on a worker thread.
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

PIECE_BYTES = 1 << 20


def member_spans(
    body: bytes,
    start: int,
    end: int,
    find_cut: Callable[[bytes, int, int], int],
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
    for a, b in member_spans(body, len(prefix), end, find_cut):
        try:
            out.append(decode_piece(opening + body[a:b] + closing))
        except ValueError:  # msgspec.DecodeError and ValidationError are ValueErrors
            return None
    return out
