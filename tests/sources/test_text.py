"""The sanitising point for upstream text (``text.py``) and the body reader's
inflation with a cap (``sources/base.py``): issue 14, items 1 and 2."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifinops.settings import settings_from_mapping
from aifinops.sources.base import SourceError, read_body
from aifinops.sources.opencost import parse_allocation_response
from aifinops.sources.promapi import parse_vector
from aifinops.sources.promtext import decode_page
from aifinops.text import clean_json_text, loads_json
from aifinops.web.app import REFRESHER, create_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [
        (r'"a\ud800b"', "a\ufffdb"),  # lone high surrogate
        (r'"a\uDC00"', "a\ufffd"),  # lone low surrogate, upper-case hex
        (r'"\ud800\u0041"', "\ufffdA"),  # high followed by a non-surrogate
        (r'"\ud83d\ude00"', "\U0001f600"),  # a valid pair is kept
        (r'"\\ud800"', "\\ud800"),  # an escaped backslash: the text "\ud800", no escape
        (r'"\\\ud800"', "\\\ufffd"),  # an escaped backslash, then a lone escape
        (r'"\ud800\ud800\udc00"', "\ufffd\U00010000"),
    ],
)
def test_lone_surrogate_escapes_become_replacement_characters(
    json_text: str, expected: str
) -> None:
    if "\ufffd" in expected:
        with pytest.raises(UnicodeEncodeError):  # what the stdlib gives reached the renderer
            json.loads(json_text).encode("utf-8")
    assert loads_json(json_text.encode()) == expected
    expected.encode("utf-8")  # what the renderer does: never raises now


def test_invalid_utf8_bytes_are_replaced_not_raised() -> None:
    # raw UTF-8 of a surrogate (ED A0 80), which json.loads decodes with surrogatepass
    assert loads_json(b'{"m": "a\xed\xa0\x80b\xff"}') == {"m": "a\ufffd\ufffd\ufffdb\ufffd"}
    assert loads_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}  # a BOM, as json.loads allows
    assert clean_json_text('{"a": "plain"}') == '{"a": "plain"}'
    with pytest.raises(ValueError):
        loads_json(b"<html>")
    # exposition pages are decoded strictly: not UTF-8 is a parse error at the source, and
    # strict UTF-8 cannot hold a lone surrogate (nothing unencodable gets through)
    with pytest.raises(UnicodeDecodeError):
        decode_page(b'm{l="a\xed\xa0\x80b"} 1\n')


def test_prometheus_api_label_with_a_lone_surrogate() -> None:
    """modelName through the Prometheus API (the issue's second route)."""
    body = (
        b'{"status":"success","data":{"resultType":"vector","result":[{"metric":'
        b'{"modelName":"gpt-\\ud800","team":"a"},"value":[1700000000,"12"]}]}}'
    )
    assert parse_vector(body) == [({"modelName": "gpt-\ufffd", "team": "a"}, 12.0)]


def test_opencost_label_with_a_lone_surrogate() -> None:
    doc = json.loads((FIXTURES / "opencost_swagger_allocation_compute_example.json").read_text())
    rows = [row for s in doc["data"] for row in s.values() if row.get("properties")]
    assert rows
    rows[0]["properties"].setdefault("labels", {})["team"] = "x\ud800"
    allocations = parse_allocation_response(json.dumps(doc).encode(), 1.0).allocations
    labels = [a.labels.get("team") for a in allocations if a.labels.get("team")]
    assert labels == ["x\ufffd"]


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def body(chunks: list[bytes], encoding: str | None, cap: int) -> bytes:
    headers = {"content-encoding": encoding} if encoding else {}
    resp = httpx.Response(200, headers=headers, stream=_Stream(chunks))
    return b"".join([piece async for piece in read_body(resp, "http://u", cap)])


def split(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_bodies_are_inflated_in_pieces_under_the_cap() -> None:
    text = b'{"status": "success"}' * 500
    assert await body(split(gzip.compress(text)), "gzip", 1 << 20) == text
    assert await body(split(zlib.compress(text)), "deflate", 1 << 20) == text
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert await body(split(raw.compress(text) + raw.flush()), "deflate", 1 << 20) == text
    two = gzip.compress(text[:100]) + gzip.compress(text[100:])  # two gzip members
    assert await body(split(two, 7), "gzip", 1 << 20) == text
    assert await body(split(gzip.compress(gzip.compress(text))), "gzip, gzip", 1 << 20) == text
    assert await body(split(text), None, 1 << 20) == text

    # 256 MiB of zeros in ~250 kB: cut at the 1 MiB cap while inflating
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join([c.compress(bytes(1 << 20)) for _ in range(256)] + [c.flush()])
    seen = 0
    resp = httpx.Response(200, headers={"content-encoding": "gzip"}, stream=_Stream([bomb]))
    with pytest.raises(SourceError) as err:
        async for piece in read_body(resp, "http://u", 1 << 20):
            seen += len(piece)
    assert err.value.reason == "too_large"
    assert seen <= 1 << 20

    for chunks, encoding in (
        ([gzip.compress(text)[:-30]], "gzip"),  # cut off
        ([b"not gzip at all"], "gzip"),
        ([text], "br"),
    ):
        with pytest.raises(SourceError) as err:
            await body(chunks, encoding, 1 << 20)
        assert err.value.reason == "parse"


async def test_pushed_usage_with_a_lone_surrogate_is_replaced(aiohttp_client: Any) -> None:
    """The push endpoint's JSON goes through the same point: a tenant ``"a\\ud800"`` is
    counted as ``a\\ufffd`` and the page renders (it used to stop the refresh loop)."""
    settings = settings_from_mapping({"tokens": {"push": {"enabled": True}}})
    client = await aiohttp_client(create_app(settings, sources=[], run_loop=False))
    body = b'{"records": [{"tenant": "a\\ud800", "model": "gpt-4o", "input_tokens": 5}]}'
    resp = await client.post(
        "/api/v1/usage", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 202, await resp.text()
    await client.app[REFRESHER].refresh_once()
    text = await (await client.get("/metrics")).text()
    assert 'tenant="a\ufffd"' in text
    assert 'aifinops_refresh_failures_total{stage="render"} 0' in text
