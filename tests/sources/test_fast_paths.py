"""The fast paths (msgspec, decoding in pieces, the wanted-line search, the label cache) give
exactly what the reference paths give, on the simulator's payloads and on hostile ones. For
OpenCost the reference decoder is in the tests only (opencost_reference.py), as the oracle."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from aifinops.demo.cluster import ClusterSpec, SimCluster
from aifinops.sources import jsonchunks, opencost, promapi
from aifinops.sources.promtext import LabelCache, parse_text
from tests.sources.opencost_reference import reference_allocations, reference_sets
from tests.sources.promapi_reference import reference_vector

T0 = 1_750_000_000.0


@pytest.fixture(scope="module")
def sim() -> SimCluster:
    return SimCluster(ClusterSpec.scaled(120))


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonchunks, "PIECE_BYTES", 2048)


def test_opencost_fast_path_equals_reference(sim: SimCluster, small_pieces: None) -> None:
    body = compact(sim.opencost_allocation(T0, 1.0, aggregate="namespace,pod", include_idle=True))
    assert body.startswith(opencost._ONE_SET_PREFIX)
    pieces = jsonchunks.decode_pieces(
        body,
        opencost._ONE_SET_PREFIX,
        opencost._ONE_SET_SUFFIX,
        opencost._row_cut,
        opencost._decode_rows,
        (b"{", b"}"),
    )
    assert pieces is not None and len(pieces) > 10
    assert opencost.parse_allocation_response(body, 1.0) == reference_allocations(body, 1.0)


@pytest.mark.parametrize(
    "hostile",
    [
        '":{"name":"',
        '},"x":{"name":"y"}',
        '\\",\\"',
        "},{",
        '"}]}',
    ],
)
def test_opencost_markers_inside_strings_do_not_cut(hostile: str, small_pieces: None) -> None:
    rows = {
        f"ns/p{i}": {
            "name": f"ns/p{i}",
            "properties": {"namespace": "ns", "pod": f"p{i}", "labels": {"app": hostile * 30}},
            "cpuCost": i * 0.25,
        }
        for i in range(60)
    }
    rows['ns/odd":{"name":"'] = {"name": "x", "properties": {"namespace": "ns"}, "ramCost": 1.0}
    body = compact({"code": 200, "status": "success", "data": [rows]})
    assert opencost.parse_allocation_response(body, 2.0) == reference_allocations(body, 2.0)


def test_opencost_several_sets_and_odd_shapes_decode_as_the_reference_does() -> None:
    first = {"ns/a": {"name": "ns/a", "minutes": 30.0, "cpuCost": 1.0}}
    second = {"ns/a": {"name": "ns/a", "minutes": 30.0, "cpuCost": 2.0}, "ns/b": {"name": "b"}}
    for doc in (
        {"code": 200, "status": "success", "data": [first, second]},
        {"code": 200, "status": "success", "data": [first, None]},
        {"status": "success", "code": 200, "data": [first]},
        # OpenCost's answer before its cache is warm, and null numbers (NaN in Go)
        {"code": 200, "status": "success", "data": None},
        {"code": 200, "data": [{"ns/a": {"name": "ns/a", "cpuCost": None, "gpuCount": 2}}]},
        # older OpenCost: GPU averages at the top level; an adjustment beyond its cost
        {
            "code": 200,
            "data": [
                {
                    "ns/a": {
                        "gpuRequestAverage": 0.5,
                        "gpuUsageAverage": 0.25,
                        "cpuCost": 1.0,
                        "cpuCostAdjustment": -3.0,
                    }
                }
            ],
        },
        # a window start of another type is ignored, not an error
        {"code": 200, "data": [{"ns/a": {"window": {"start": 5}, "cpuCost": 1.0}}]},
        # invalid Unicode in a label: replaced, as the reference does
        {"code": 200, "data": [{"ns/a": {"properties": {"labels": {"a": "\ud800x"}}}}]},
    ):
        body = compact(doc)
        assert opencost.parse_allocation_response(body, 1.0) == reference_allocations(body, 1.0)


@pytest.mark.parametrize(
    "row",
    [
        b'{"cpuCost":1e400}',  # beyond a double: the stdlib reads infinity
        b'{"cpuCost":1e308,"cpuCostAdjustment":1e308}',  # the sum overflows
        b'{"cpuCost":NaN,"ramCost":Infinity}',
        b'{"gpuCost":-Infinity,"gpuCostAdjustment":Infinity}',  # inf - inf is NaN
        b'{"minutes":-5,"gpuCount":-1,"gpuAllocation":{"gpuUsageAverage":-0.5}}',
        b'{"gpuAllocation":{"gpuRequestAverage":null,"gpuUsageAverage":1e999},'
        b'"gpuRequestAverage":2,"gpuCount":9}',
        b'{"cpuCost":-0.0,"ramCost":1,"ramCostAdjustment":-1,"pvCost":5e-324}',
        b'{"gpuHours":1.7976931348623157e308,"cpuCoreHours":2,"ramByteHours":-1e-300}',
    ],
)
def test_opencost_hostile_numbers_clamp_as_the_reference_does(row: bytes) -> None:
    body = b'{"code":200,"status":"success","data":[{"ns/a":' + row + b"}]}"
    got = opencost.parse_allocation_response(body, 1.0)
    assert got == reference_allocations(body, 1.0)
    assert all(
        0.0 <= v < float("inf")
        for v in msgspec.structs.astuple(got.allocations[0])
        if isinstance(v, float)
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "parse"),
        (b"[]", "invalid"),
        (b'"\x80"', "invalid"),
        (b'{"code":500,"message":"boom"}', "invalid"),
        (b'{"code":200,"data":{}}', "invalid"),
        (b'{"code":200,"data":[3]}', "invalid"),
        (b'{"code":200,"data":[{"a":{"cpuCost":"1.0"}}]}', "invalid"),
        (b'{"code":200,"data":[{"a":{"cpuCost":true}}]}', "invalid"),
        (b'{"code":200,"data":[{"a":{"properties":{"labels":{"x":1}}}}]}', "invalid"),
        (b'{"code":200,"data":[{"a":{"properties":{"namespace":3}}}]}', "invalid"),
    ],
)
def test_opencost_refuses_what_the_reference_refuses(body: bytes, reason: str) -> None:
    for decode in (
        lambda: opencost.parse_allocation_response(body, 1.0),
        lambda: reference_allocations(body, 1.0),
    ):
        with pytest.raises(opencost.SourceError) as caught:
            decode()
        assert caught.value.reason == reason


def test_opencost_daily_sets_equal_the_reference(sim: SimCluster, small_pieces: None) -> None:
    # Three daily sets, as OpenCost answers step=1d&accumulate=false (the month query).
    start = T0 - 3 * 86400.0
    days = [sim.opencost_allocation(start + (i + 1) * 86400.0, 24.0)["data"][0] for i in range(3)]
    body = compact({"code": 200, "status": "success", "data": days})
    got = opencost.parse_allocation_sets(body, start, T0)
    assert len(got.sets) == 3
    expected = reference_sets(body)
    assert [tuple(rows.values()) for rows, _ in expected] == [
        allocations.allocations for _, _, allocations in got.sets
    ]


def test_prometheus_vector_fast_path_equals_reference(sim: SimCluster, small_pieces: None) -> None:
    body = compact(sim.prometheus_vector(T0, "DCGM_FI_DEV_GPU_UTIL"))
    assert body.startswith(promapi._VECTOR_PREFIX)
    assert promapi.parse_vector(body) == reference_vector(body)
    hostile = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"a": ',{"metric":' * 50, "i": str(i)}, "value": [T0, str(i)]}
                for i in range(100)
            ],
        },
    }
    body = compact(hostile)
    assert promapi.parse_vector(body) == reference_vector(body)


def vector_body(*elements: Any, pretty: bool = False) -> bytes:
    doc = {"status": "success", "data": {"resultType": "vector", "result": list(elements)}}
    return json.dumps(doc).encode() if pretty else compact(doc)


GOOD = {"metric": {"gpu": "0"}, "value": [T0, "1.5"]}


@pytest.mark.parametrize("pretty", [False, True])
@pytest.mark.parametrize(
    "bad",
    [
        {"metric": {"gpu": 1}, "value": [T0, "2"]},
        {"metric": {}, "value": [T0, "twelve"]},
        {"metric": {}, "value": [T0, 2]},
        {"metric": {}, "value": [T0]},
        {"metric": {"a": "b"}},
        "x",
        {"metric": {"a": "\ud800"}, "value": [T0, "3"]},
    ],
)
def test_prometheus_vector_bad_series_as_the_reference(bad: Any, pretty: bool) -> None:
    # The token sources skip a bad series and count it; the others fail with its reason.
    body = vector_body(GOOD, bad, GOOD, pretty=pretty)
    skipped, expected_skipped = [0], [0]
    assert promapi.parse_vector(body, skipped) == reference_vector(body, expected_skipped)
    assert skipped == expected_skipped
    outcomes = []
    for decode in (promapi.parse_vector, reference_vector):
        try:
            outcomes.append(decode(body))
        except opencost.SourceError as exc:
            outcomes.append(exc.reason)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    "body",
    [
        b"<html>gateway</html>",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'{"status":"error","errorType":"bad_data","error":"x"}',
        b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
        b'{"status":"success"}',
        b'{"status":"success","data":{"resultType":"vector","result":{}}}',
        b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}',
    ],
)
def test_prometheus_answers_as_the_reference(body: bytes) -> None:
    outcomes: list[Any] = []
    for decode in (promapi.parse_vector, reference_vector):
        try:
            outcomes.append(decode(body))
        except opencost.SourceError as exc:
            outcomes.append((exc.reason, str(exc)))
    if isinstance(outcomes[0], list):
        assert repr(outcomes[0]) == repr(outcomes[1])  # NaN compares by its text
    else:
        assert outcomes[0] == outcomes[1]


def test_text_wanted_lines_equal_a_full_parse(sim: SimCluster) -> None:
    text = sim.dcgm_exposition(T0)
    everything = parse_text(text)
    for wanted in (
        frozenset({"DCGM_FI_DEV_GPU_UTIL"}),
        frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}),
        frozenset({"DCGM_FI_DEV"}),  # a prefix of many names, the name of none
    ):
        assert parse_text(text, wanted) == [s for s in everything if s[0] in wanted]


def test_text_wanted_lines_odd_pages() -> None:
    page = (
        "# HELP m help mentions m{x} 1\n"
        "m_longer 5\n"
        '  m{a="m 2"} 1\n'
        'other{v="m 3"} 2\n'
        "m 4\n"
        "\tm\t5\n"
        "n 1\n"
        "m 6"
    )
    got = [
        (name, dict(labels), value) for name, labels, value in parse_text(page, frozenset({"m"}))
    ]
    assert got == [("m", {"a": "m 2"}, 1.0), ("m", {}, 4.0), ("m", {}, 5.0), ("m", {}, 6.0)]
    with pytest.raises(ValueError, match="line 3"):
        parse_text("a 1\nb 2\nm{x=} 1\n", frozenset({"m"}))


def test_label_cache_reuses_label_sets_and_stays_one_page_big() -> None:
    cache = LabelCache()
    first = parse_text('a{x="1"} 1\na{x="2"} 2\n', cache=cache)
    second = parse_text('a{x="1"} 3\nb{y="3"} 4\n', cache=cache)
    assert second[0][1] is first[0][1]
    assert set(cache.previous) == {'x="1"', 'y="3"'}
    assert [(n, dict(labels), v) for n, labels, v in second] == [
        ("a", {"x": "1"}, 3.0),
        ("b", {"y": "3"}, 4.0),
    ]
