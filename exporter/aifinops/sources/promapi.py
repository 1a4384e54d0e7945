"""Instant queries against the Prometheus HTTP API (``GET /api/v1/query``).

Fetch and parse are split: :func:`instant_query` does the HTTP call through
:func:`~aifinops.sources.base.get_bytes`, :func:`parse_vector` is pure and is what tests feed
with recorded bodies. Thanos Query and Mimir serve the same API and are read the same way.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from aifinops.sources.base import CpuRunner, SourceError, get_bytes
from aifinops.sources.jsonchunks import decode_pieces
from aifinops.text import loads_json


async def instant_query(
    client: httpx.AsyncClient,
    base_url: str,
    promql: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    skipped: list[int] | None = None,
    run: CpuRunner,
) -> list[tuple[dict[str, str], float]]:
    """Evaluate ``promql`` at the server's current time; return its instant vector.

    ``base_url`` is the Prometheus root (``http://prometheus:9090``, with a path prefix if it is
    served under one). ``timeout`` is in seconds, ``max_bytes`` caps the response body.
    Raises :class:`SourceError` for every failure; see :func:`parse_vector` for the result
    and ``skipped``. The answer is parsed by ``run`` (the CPU worker).
    """
    body = await query_body(
        client, base_url, promql, timeout=timeout, max_bytes=max_bytes, headers=headers
    )
    # On the CPU worker thread: at 10k GPUs the answer is 14k series (a few MB).
    return await run(parse_vector, body, skipped)


async def query_body(
    client: httpx.AsyncClient,
    base_url: str,
    promql: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The body of ``GET /api/v1/query?query=promql`` (:func:`instant_query` without the
    parse, for a caller that reads it with a :class:`VectorReader`)."""
    return await get_bytes(
        client,
        f"{base_url.rstrip('/')}/api/v1/query",
        timeout=timeout,
        max_bytes=max_bytes,
        params={"query": promql},
        headers=headers,
    )


# --- the decoder: msgspec --------------------------------------------------------------------
# One typed decoder. Prometheus' compact answer is decoded a piece of elements at a time
# (jsonchunks), so a scrape waits for one piece, not the whole answer; any other body, or one
# with an element these types refuse, is decoded whole and its elements one by one, so one
# bad series can be skipped (``skipped``) or named. Text msgspec's strict reader refuses
# (invalid UTF-8, lone surrogates, NaN tokens) is read by the stdlib (aifinops.text) and
# converted to the same types. The stdlib reference decoder is in the tests, as the oracle.


class _Element(msgspec.Struct, gc=False):
    metric: dict[str, str]
    value: tuple[Any, str]


class _Data(msgspec.Struct, gc=False):
    resultType: Any = None
    result: Any = None  # a list of elements, each decoded as an _Element on its own


class _Answer(msgspec.Struct, gc=False):
    status: Any = None
    errorType: Any = "?"
    error: Any = "?"
    data: _Data | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode
_decode_elements = msgspec.json.Decoder(list[_Element]).decode
# Prometheus' compact answer; elements start with their "metric" field.
_VECTOR_PREFIX = b'{"status":"success","data":{"resultType":"vector","result":['
_VECTOR_SUFFIX = b"]}}"
_ELEMENT_START = b',{"metric":'


def _element_cut(body: bytes, at: int, end: int) -> int:
    return body.find(_ELEMENT_START, at, end)


def _answer(body: bytes) -> _Answer:
    """The whole answer, its elements left as decoded JSON values; raises SourceError."""
    try:
        return _decode_answer(body)
    except msgspec.ValidationError as exc:
        raise _shape_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        doc = loads_json(body)
    except (ValueError, RecursionError) as exc:
        raise SourceError("parse", f"Prometheus API response is not JSON: {exc}") from None
    try:
        return msgspec.convert(doc, _Answer)
    except msgspec.ValidationError as exc:
        raise _shape_error(exc) from None


def _shape_error(exc: msgspec.ValidationError) -> SourceError:
    text = str(exc)
    if " - at `" not in text:
        return SourceError("invalid", "Prometheus API response is not a JSON object")
    return SourceError("invalid", f"Prometheus API response of another shape: {text[:200]}")


def _series(item: Any) -> tuple[dict[str, str], float]:
    """One ``{"metric": {...}, "value": [ts, "v"]}`` element."""
    try:
        e = msgspec.convert(item, _Element)
    except msgspec.ValidationError:
        if not isinstance(item, dict):
            raise SourceError("invalid", "a vector element is not an object") from None
        # Not the element itself: its labels may hold an API key hash or an email address.
        raise SourceError(
            "invalid", "malformed vector element (labels or value of a wrong type)"
        ) from None
    try:
        return e.metric, float(e.value[1])
    except ValueError:
        raise SourceError("invalid", f"sample value {e.value[1][:40]!r} is not a number") from None


def parse_vector(
    body: bytes, skipped: list[int] | None = None
) -> list[tuple[dict[str, str], float]]:
    """Parse a ``/api/v1/query`` response whose result is an instant vector.

    Expects ``{"status": "success", "data": {"resultType": "vector", "result": [{"metric":
    {...}, "value": [<unix seconds>, "<number>"]}, ...]}}`` and returns one ``(labels, value)``
    pair per series, in the server's order. Values arrive as strings; ``"NaN"``, ``"+Inf"`` and
    ``"-Inf"`` become the float values (the caller decides whether to keep them). An empty
    result is an empty list. ``warnings`` and other extra keys are ignored.

    Raises :class:`SourceError` with reason ``parse`` when the body is not JSON, and
    ``invalid`` when it is JSON of another shape: an error status, a result type other than
    ``vector``, a series without a numeric value or with non-string label values. With
    ``skipped`` (the token sources: one bad series must not hide the others) such a series is
    left out and counted in ``skipped[0]`` instead.
    """
    pieces = decode_pieces(
        body, _VECTOR_PREFIX, _VECTOR_SUFFIX, _element_cut, _decode_elements, (b"[", b"]")
    )
    if pieces is not None:
        try:
            return [(e.metric, float(e.value[1])) for piece in pieces for e in piece]
        except ValueError:
            pass  # a value that is no number: decided element by element below
    answer = _answer(body)
    if answer.status != "success":
        detail = f"{answer.errorType}: {answer.error}"
        raise SourceError("invalid", f"Prometheus API status {answer.status!r} ({detail:.200})")
    data = answer.data
    if data is None or data.resultType != "vector":
        kind = data.resultType if data is not None else None
        raise SourceError("invalid", f"expected an instant vector, got resultType {kind!r}")
    result = data.result
    if not isinstance(result, list):
        raise SourceError("invalid", "Prometheus API data.result is not a list")
    if skipped is None:
        return [_series(item) for item in result]
    out = []
    for item in result:
        try:
            out.append(_series(item))
        except SourceError:
            skipped[0] += 1
    return out


# --- reading the same query's answer again and again -----------------------------------------


class _RawValue(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """``[ts, "value"]``: what ``tuple[Any, str]`` accepts, as an object the garbage
    collector does not track (a tuple per series would be)."""

    ts: msgspec.Raw
    text: str


class _RawElement(msgspec.Struct, gc=False):
    metric: msgspec.Raw  # the label object's bytes, syntax checked, decoded once per series
    value: _RawValue


_decode_raw_elements = msgspec.json.Decoder(list[_RawElement]).decode
_decode_labels = msgspec.json.Decoder(dict[str, str]).decode
E = TypeVar("E")


class VectorReader(Generic[E]):
    """Reads the answer of one instant query asked again and again (a DCGM query each
    refresh), doing the work per *series* once.

    From one answer to the next the series stay, only their values change. The reader keys
    each element by a digest of its ``metric`` object's bytes (Python's 64-bit hash, keyed
    per process: label values cannot be chosen to collide) and keeps what ``derive(labels)``
    made of it; an element seen before costs its value
    only. Between reads it holds the last answer's digests, in order, as one array, beside
    its entries: no table of label texts, no dict. Series gone from an answer are forgotten.
    An answer of another shape than Prometheus' compact one, or one whose labels or values
    :func:`parse_vector` would refuse, is read by :func:`parse_vector` itself (its result,
    or its error), each series derived afresh.

    :meth:`read` gives, per element of ``parse_vector(body)`` in order, ``derive(labels)``
    (or the entry kept for those labels) and the value.
    """

    __slots__ = ("_keys", "_order")

    def __init__(self) -> None:
        self._keys = array("q")
        self._order: list[E] = []

    def __len__(self) -> int:
        """Series known from the last read."""
        return len(self._order)

    def read(
        self, body: bytes, derive: Callable[[dict[str, str]], E]
    ) -> tuple[list[E], list[float]]:
        """The entries and values of every element of ``body``, in order. When the series
        are those of the last read, in the same order, the entry list is the last read's
        (the same object): do not change it."""
        previous = set(self._keys)

        def piece(text: bytes) -> tuple[list[int], list[float], list[tuple[int, bytes]]]:
            # One piece's keys, values and the label bytes of series not in the last read:
            # the rest of the piece is not kept (a read holds the body, not a copy of it).
            elements = _decode_raw_elements(text)
            metrics = [bytes(e.metric) for e in elements]  # Raw is not hashable
            keys = [hash(m) for m in metrics]
            # float() of the str msgspec decoded: parse_vector's own conversion.
            values = [float(e.value.text) for e in elements]
            if previous.issuperset(keys):
                return keys, values, []
            return (
                keys,
                values,
                [(k, m) for k, m in zip(keys, metrics, strict=True) if k not in previous],
            )

        pieces = decode_pieces(
            body, _VECTOR_PREFIX, _VECTOR_SUFFIX, _element_cut, piece, (b"[", b"]")
        )
        if pieces is not None:
            try:
                return self._read(pieces, derive)
            except ValueError:
                pass  # labels parse_vector decides on (it may refuse them)
        series = parse_vector(body)
        return [derive(labels) for labels, _ in series], [value for _, value in series]

    def _read(
        self,
        pieces: list[tuple[list[int], list[float], list[tuple[int, bytes]]]],
        derive: Callable[[dict[str, str]], E],
    ) -> tuple[list[E], list[float]]:
        keys = array("q")
        values: list[float] = []
        new: dict[int, bytes] = {}
        for piece_keys, piece_values, piece_new in pieces:
            keys.extend(piece_keys)
            values += piece_values
            new.update(piece_new)
        if keys == self._keys:
            return self._order, values
        known = dict(zip(self._keys, self._order, strict=True))
        entries: list[E] = []
        for k in keys:
            entry = known.get(k)
            if entry is None:  # the first of its series in this answer
                entry = known[k] = derive(_decode_labels(new[k]))
            entries.append(entry)
        self._keys = keys
        self._order = entries
        return self._order, values
