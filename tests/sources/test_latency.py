"""The latency source: vLLM's e2e latency histogram (V0 and V1 pages), the windowed quantile
of scrape mode (exact on hand-built buckets, resets, replicas), the prometheus mode through a
local server speaking the Prometheus API, and the settings' errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aifinops.offload import run_cpu
from aifinops.settings import ConfigError, LatencySourceSettings, settings_from_mapping
from aifinops.sources.base import SourceError
from aifinops.sources.latency import (
    Histogram,
    HistogramWindow,
    LatencySource,
    figures_from_vector,
    histograms_from_samples,
    latency_query,
    merge_buckets,
)
from aifinops.sources.promtext import parse_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BUCKET = "vllm:e2e_request_latency_seconds_bucket"
WANTED = frozenset({BUCKET})
QWEN = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
INF = math.inf

# vLLM V0 (labels: model_name only; prometheus_client writes le first here, as in the
# aibrix capture of a real V0 page) with the V0 bounds 1…60 s, and the _sum/_count lines.
V0_BOUNDS = ("1.0", "2.5", "5.0", "10.0", "15.0", "20.0", "30.0", "40.0", "50.0", "60.0", "+Inf")
V0_COUNTS = ("1.0", "3.0") + ("4.0",) * 9
V0_PAGE = (
    "# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency in "
    "seconds.\n# TYPE vllm:e2e_request_latency_seconds histogram\n"
    f'vllm:e2e_request_latency_seconds_sum{{model_name="{QWEN}"}} 7.5\n'
    + "".join(
        f'{BUCKET}{{le="{le}",model_name="{QWEN}"}} {n}\n'
        for le, n in zip(V0_BOUNDS, V0_COUNTS, strict=True)
    )
    + f'vllm:e2e_request_latency_seconds_count{{model_name="{QWEN}"}} 4.0\n'
)
V1_BOUNDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
             120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


def v1_page(model: str, counts_by_engine: dict[str, list[float]]) -> str:
    """A vLLM V1 page: one histogram per engine core (``engine`` label), le written last."""
    lines = ["# TYPE vllm:e2e_request_latency_seconds histogram\n"]
    for engine, counts in counts_by_engine.items():
        for le, n in zip((*V1_BOUNDS, INF), counts, strict=True):
            bound = "+Inf" if le == INF else repr(le)
            lines.append(f'{BUCKET}{{engine="{engine}",model_name="{model}",le="{bound}"}} {n}\n')
        lines.append(
            f'vllm:e2e_request_latency_seconds_created{{engine="{engine}",model_name="{model}"}}'
            " 1.7e9\n"
        )
    return "".join(lines)


def cumulative(
    per_bucket: dict[float, float], bounds: tuple[float, ...] = V1_BOUNDS
) -> list[float]:
    out, running = [], 0.0
    for le in (*bounds, INF):
        running += per_bucket.get(le, 0.0)
        out.append(running)
    return out


def hist(model: str, bounds: tuple[float, ...], counts: tuple[float, ...]) -> Histogram:
    return Histogram(model, (*bounds, INF), counts)


def sid(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


# --- parsing ---------------------------------------------------------------------------------


def test_v0_page_one_series_per_model() -> None:
    got = histograms_from_samples(parse_text(V0_PAGE, WANTED), "model_name")
    assert got == {
        sid(model_name=QWEN): Histogram(
            QWEN,
            (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, INF),
            (1.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0),
        )
    }


def test_v1_page_one_series_per_engine() -> None:
    e0 = cumulative({1.0: 5, 2.0: 3})
    e1 = cumulative({0.5: 1, 7680.0: 1, INF: 2})
    got = histograms_from_samples(
        parse_text(v1_page("llama", {"0": e0, "1": e1}), WANTED), "model_name"
    )
    assert set(got) == {sid(engine="0", model_name="llama"), sid(engine="1", model_name="llama")}
    h1 = got[sid(engine="1", model_name="llama")]
    assert h1.bounds == (*V1_BOUNDS, INF) and h1.counts == tuple(e1)
    assert h1.counts[-1] == 4.0 and h1.model == "llama"


def test_real_v0_page_without_the_histogram_gives_nothing() -> None:
    # The aibrix capture of a real V0 page has other histograms, not this one.
    text = (FIXTURES / "vllm_metrics_v0_aibrix_runtime_doc.txt").read_text()
    assert histograms_from_samples(parse_text(text, WANTED), "model_name") == {}
    assert histograms_from_samples(parse_text(text + V0_PAGE, WANTED), "model_name")


@pytest.mark.parametrize(
    "lines",
    [
        ['{le="1.0",model_name="m"} 1', '{le="+Inf",model_name="m"} NaN'],  # NaN count
        ['{le="1.0",model_name="m"} 1', '{le="+Inf",model_name="m"} -1'],  # negative
        [
            '{le="1.0",model_name="m"} 1',
            '{le="1.0",model_name="m"} 2',
            '{le="+Inf",model_name="m"} 2',
        ],
        ['{le="1.0",model_name="m"} 1', '{model_name="m"} 2', '{le="+Inf",model_name="m"} 2'],
        ['{le="x",model_name="m"} 1', '{le="+Inf",model_name="m"} 2'],  # unparsable le
        ['{le="NaN",model_name="m"} 1', '{le="+Inf",model_name="m"} 2'],
        ['{le="1.0",model_name="m"} 1', '{le="2.0",model_name="m"} 2'],  # no +Inf: no total
        ['{le="1.0"} 1', '{le="+Inf"} 2'],  # no model
        ['{le="1.0",model_name="None"} 1', '{le="+Inf",model_name="None"} 2'],
    ],
)
def test_broken_series_are_left_out_whole(lines: list[str]) -> None:
    good = ['{le="1.0",model_name="ok"} 1', '{le="+Inf",model_name="ok"} 3']
    text = "".join(f"{BUCKET}{line}\n" for line in [*lines, *good])
    got = histograms_from_samples(parse_text(text, WANTED), "model_name")
    assert list(got) == [sid(model_name="ok")]


# --- the quantile over the window ------------------------------------------------------------

B = (1.0, 2.0, 4.0)


def window_figure(readings: list[tuple[float, dict[str, Histogram]]], q: float = 0.95, **kw: Any):
    w = HistogramWindow(kw.pop("window", 300.0), kw.pop("max_snapshots", 32))
    for now, by_target in readings:
        for target, h in by_target.items():
            w.observe(target, now, {sid(model_name=h.model): h})
    return w, w.figures(q, kw.pop("min_requests", 1), "vllm")


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        # increase (10, 30, 38, 40): rank 0.9·40 = 36 in (2, 4] holding 8 → 2 + 2·6/8
        (0.9, 3.5),
        # rank 38 reaches the (2, 4] bucket's top exactly
        (0.95, 4.0),
        # rank 20 in (1, 2] holding 20 from 10 → 1 + 1·10/20
        (0.5, 1.5),
        # rank 4 in the first bucket (0, 1] → 4/10
        (0.1, 0.4),
    ],
)
def test_quantile_of_the_increase_is_exact(q: float, expected: float) -> None:
    _, figures = window_figure(
        [
            (0.0, {"a": hist("m", B, (100.0, 200.0, 300.0, 400.0))}),
            (60.0, {"a": hist("m", B, (110.0, 230.0, 338.0, 440.0))}),
        ],
        q,
    )
    assert figures == {("m", "vllm"): expected}


def test_only_the_inf_bucket_grew_gives_the_highest_finite_bound() -> None:
    _, figures = window_figure(
        [
            (0.0, {"a": hist("m", B, (1.0, 1.0, 1.0, 1.0))}),
            (60.0, {"a": hist("m", B, (1.0, 1.0, 1.0, 51.0))}),
        ]
    )
    assert figures == {("m", "vllm"): 4.0}


def test_a_histogram_with_only_the_inf_bucket_has_no_figure() -> None:
    _, figures = window_figure(
        [(0.0, {"a": hist("m", (), (0.0,))}), (60.0, {"a": hist("m", (), (50.0,))})]
    )
    assert figures == {}


def test_empty_window_and_first_reading_have_no_figure() -> None:
    h = hist("m", B, (10.0, 20.0, 30.0, 40.0))
    # one reading: a baseline, whatever its counts (they go back to the server's start)
    assert window_figure([(0.0, {"a": h})])[1] == {}
    # no request since: no figure (PromQL gives NaN)
    assert window_figure([(0.0, {"a": h}), (60.0, {"a": h})])[1] == {}


def test_min_requests_is_a_floor_on_the_window_count() -> None:
    readings = [
        (0.0, {"a": hist("m", B, (0.0, 0.0, 0.0, 0.0))}),
        (60.0, {"a": hist("m", B, (5.0, 15.0, 19.0, 19.0))}),
    ]
    assert window_figure(readings, min_requests=20)[1] == {}
    # rank 0.95·19 = 18.05 in (2, 4] holding 4 from 15
    want = 2 + 2 * (0.95 * 19 - 15) / 4
    assert window_figure(readings, min_requests=19)[1] == {("m", "vllm"): pytest.approx(want)}


def test_a_restart_inside_the_window_loses_nothing() -> None:
    # 0→60 s: +10/+20/+28/+30; restart; at 120 s the new process shows 2/6/8/10 since then.
    _, figures = window_figure(
        [
            (0.0, {"a": hist("m", B, (100.0, 200.0, 300.0, 400.0))}),
            (60.0, {"a": hist("m", B, (110.0, 220.0, 328.0, 430.0))}),
            (120.0, {"a": hist("m", B, (2.0, 6.0, 8.0, 10.0))}),
        ],
        0.5,
    )
    # increase (12, 26, 36, 40): rank 20 in (1, 2] holding 14 from 12 → 1 + 8/14
    assert figures == {("m", "vllm"): pytest.approx(1 + 8 / 14, rel=1e-15)}


def test_new_bucket_bounds_are_a_restart_that_drops_the_older_readings() -> None:
    old = (0.5, 1.0, 2.0)
    _, figures = window_figure(
        [
            (0.0, {"a": hist("m", old, (100.0, 200.0, 300.0, 400.0))}),
            (60.0, {"a": hist("m", old, (900.0, 900.0, 900.0, 900.0))}),  # would be p95 ≤ 0.5
            (120.0, {"a": hist("m", B, (10.0, 30.0, 38.0, 40.0))}),
        ],
        0.9,
    )
    # only the new process's counts, all since its start after the 60 s reading
    assert figures == {("m", "vllm"): 3.5}


def test_the_window_slides_and_the_ring_stays_bounded() -> None:
    w = HistogramWindow(300.0, max_snapshots=5)
    for i in range(100):  # one reading every 30 s; each minute (10, 30, 38, 40) more, …
        n = i // 2
        counts = (10.0 * n, 30.0 * n, 38.0 * n, 40.0 * n)
        if i >= 90:  # … but the last 5 minutes are slow: everything in (2, 4]
            extra = float(i - 89) * 100
            counts = (counts[0], counts[1], counts[2] + extra, counts[3] + extra)
        w.observe("a", 30.0 * i, {sid(model_name="m"): hist("m", B, counts)})
    (s,) = w.all_series()
    # a reading is kept every 75 s (300 / 4), so every third one (90 s apart): 5 kept
    assert [t for t, _ in s.ring] == [2610.0, 2700.0, 2790.0, 2880.0, 2970.0]
    # the baseline is the newest kept reading at or before 2970 − 300 = 2670: i = 87, n = 43
    ((_, delta),) = w.increases()["m"]
    assert delta == (10.0 * 6, 30.0 * 6, 38.0 * 6 + 1000.0, 40.0 * 6 + 1000.0)
    # rank 0.95·1240 = 1178 in (2, 4] holding 1048 from 180
    want = 2 + 2 * (0.95 * 1240 - 180) / 1048
    assert w.figures(0.95, 1, "p") == {("m", "p"): pytest.approx(want, rel=1e-15)}


def test_a_series_a_page_stops_showing_is_forgotten() -> None:
    w = HistogramWindow(300.0)
    w.observe("a", 0.0, {sid(model_name="m"): hist("m", B, (1.0, 1.0, 1.0, 1.0))})
    w.observe("b", 0.0, {sid(model_name="m"): hist("m", B, (1.0, 1.0, 1.0, 1.0))})
    w.observe("a", 30.0, {})
    assert {t: len(by_id) for t, by_id in w.targets.items()} == {"a": 0, "b": 1}
    assert w.size == 1


def test_replicas_and_engines_are_summed_per_model() -> None:
    pod_a = {"a": hist("m", B, (0.0, 0.0, 0.0, 0.0)), "b": hist("m", B, (0.0, 0.0, 0.0, 0.0))}
    pod_b = {
        "a": hist("m", B, (10.0, 10.0, 10.0, 10.0)),
        "b": hist("m", B, (0.0, 20.0, 28.0, 30.0)),
    }
    _, figures = window_figure([(0.0, pod_a), (60.0, pod_b)], 0.9)
    # sum (10, 30, 38, 40): as one server with all the requests
    assert figures == {("m", "vllm"): 3.5}


def test_different_bucket_bounds_merge_on_the_common_ones() -> None:
    # a rolling upgrade: pod a has V0's bounds, pod b V1's
    a = ((1.0, 2.5, 5.0, INF), (4.0, 10.0, 12.0, 12.0))
    b = ((0.5, 1.0, 2.0, 2.5, 10.0, INF), (1.0, 2.0, 6.0, 7.0, 8.0, 8.0))
    assert merge_buckets([a, b]) == [(1.0, 6.0), (2.5, 17.0), (INF, 20.0)]
    # rank 0.5·20 = 10 in (1, 2.5] holding 11 from 6 → 1 + 1.5·4/11
    assert merge_buckets([]) == []
    from aifinops.model.routing import histogram_quantile

    assert histogram_quantile(merge_buckets([a, b]), 0.5) == pytest.approx(1 + 1.5 * 4 / 11)


def test_too_many_series_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aifinops.sources.latency.MAX_SERIES", 2)
    w = HistogramWindow(300.0)
    many = {sid(model_name=f"m{i}"): hist(f"m{i}", B, (1.0, 1.0, 1.0, 1.0)) for i in range(3)}
    with pytest.raises(SourceError) as err:
        w.observe("a", 0.0, many)
    assert err.value.reason == "invalid" and "over 2 latency histogram series" in str(err.value)


# --- prometheus mode -------------------------------------------------------------------------


def settings(**kw: Any) -> LatencySourceSettings:
    return LatencySourceSettings(name="v", **kw)


def test_default_query() -> None:
    s = settings(prometheus_url="http://p")
    assert latency_query(s) == (
        "histogram_quantile(0.95, sum by (le, model_name) "
        "(rate(vllm:e2e_request_latency_seconds_bucket[300s]))) and on (model_name) "
        '(sum by (model_name) (increase(vllm:e2e_request_latency_seconds_bucket{le="+Inf"}'
        "[300s])) >= 20)"
    )
    s = settings(
        prometheus_url="http://p",
        selector='{namespace="llm"}',
        window_seconds=600,
        quantile=0.99,
        model_label="model",
        metric="sglang:e2e_request_latency_seconds",
        min_requests=5,
    )
    assert latency_query(s) == (
        "histogram_quantile(0.99, sum by (le, model) "
        '(rate(sglang:e2e_request_latency_seconds_bucket{namespace="llm"}[600s]))) '
        "and on (model) (sum by (model) (increase(sglang:e2e_request_latency_seconds_bucket"
        '{le="+Inf",namespace="llm"}[600s])) >= 5)'
    )
    assert latency_query(settings(prometheus_url="http://p", query="my_p95")) == "my_p95"


def test_vector_to_figures() -> None:
    got = figures_from_vector(
        [
            ({"model_name": "a"}, 1.25),
            ({"model_name": "b"}, math.nan),  # no requests in the window
            ({"model_name": "c"}, math.inf),
            ({"model_name": "d"}, -1.0),
            ({}, 2.0),
            ({"model_name": "a"}, 2.5),  # not aggregated: the highest
            ({"model_name": "x@example.com"}, 1.0),  # an email is never a model
        ],
        "model_name",
        "vllm",
    )
    assert got == {("a", "vllm"): 2.5}


async def serve(routes: dict[str, Any]) -> TestServer:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_prometheus_mode_through_the_http_api() -> None:
    seen: list[str] = []

    async def query(request: web.Request) -> web.Response:
        seen.append(request.query["query"])
        if len(seen) == 2:
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=200
            )
        return web.json_response(
            {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [
                        {"metric": {"model_name": "llama"}, "value": [1.7e9, "2.375"]},
                        {"metric": {"model_name": "idle"}, "value": [1.7e9, "NaN"]},
                    ],
                },
            }
        )

    server = await serve({"/prom/api/v1/query": query})
    s = settings(prometheus_url=str(server.make_url("/prom")), provider="self_hosted")
    src = LatencySource(s, clock=lambda: 0.0, run=run_cpu)
    try:
        async with httpx.AsyncClient() as client:
            figures = await src.fetch(client)
            with pytest.raises(SourceError) as err:
                await src.fetch(client)
    finally:
        await server.close()
    assert src.name == "latency:v"
    assert seen[0] == latency_query(s)
    assert figures == {("llama", "self_hosted"): 2.375}
    assert err.value.reason == "invalid" and "bad_data" in str(err.value)


# --- scrape mode through HTTP ----------------------------------------------------------------


async def test_scrape_mode_over_http_with_a_failing_page() -> None:
    clock = [0.0]
    minutes = {"a": 0, "b": 0}
    status = {"b": 200}

    def handler(pod: str) -> Any:
        async def page(request: web.Request) -> web.Response:
            if status.get(pod, 200) != 200:
                return web.Response(status=status[pod])
            per_minute = {1.0: 10, 2.0: 20, 4.0: 8, INF: 2}
            counts = cumulative({k: v * minutes[pod] for k, v in per_minute.items()}, B)
            return web.Response(text=v1_page_b(pod, counts))

        return page

    server = await serve({"/a/metrics": handler("a"), "/b/metrics": handler("b")})
    s = settings(
        mode="scrape",
        scrape_targets=[
            {"url": str(server.make_url("/a/metrics"))},
            {"url": str(server.make_url("/b/metrics")), "labels": {"pod": "b"}},
        ],
        min_requests=40,
    )
    src = LatencySource(s, clock=lambda: clock[0], run=run_cpu)
    try:
        async with httpx.AsyncClient() as client:
            assert await src.fetch(client) == {}  # baselines
            clock[0], minutes["a"] = 60.0, 1
            # 40 requests in the window, all from pod a: (10, 30, 38, 40); rank 38 tops (2, 4]
            assert await src.fetch(client) == {("m", "vllm"): 4.0}
            status["b"] = 503
            clock[0], minutes["a"] = 120.0, 3
            with pytest.raises(SourceError) as err:
                await src.fetch(client)
            # the page that answered still moved the window
            ((_, delta_a), (_, delta_b)) = src.window.increases()["m"]
            assert delta_a == (30.0, 90.0, 114.0, 120.0) and delta_b == (0.0, 0.0, 0.0, 0.0)
    finally:
        await server.close()
    assert err.value.reason == "http_status"


def v1_page_b(pod: str, counts: list[float]) -> str:
    return "".join(
        f'{BUCKET}{{engine="0",model_name="m",le="{"+Inf" if le == INF else le}"}} {n}\n'
        for le, n in zip((*B, INF), counts, strict=True)
    )


async def test_scrape_mode_unparsable_page_is_a_parse_error() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f'{BUCKET}{{le="1.0",model_name="m"}} one\n')

    server = await serve({"/metrics": page})
    src = LatencySource(
        settings(mode="scrape", scrape_targets=[{"url": str(server.make_url("/metrics"))}]),
        clock=lambda: 0.0,
        run=run_cpu,
    )
    try:
        async with httpx.AsyncClient() as client:
            with pytest.raises(SourceError) as err:
                await src.fetch(client)
    finally:
        await server.close()
    assert err.value.reason == "parse" and "line 1" in str(err.value)


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "field", "needle"),
    [
        ({"name": "v"}, "latency.sources.0", "mode 'prometheus' needs prometheus_url"),
        ({"name": "v", "mode": "scrape"}, "latency.sources.0", "needs at least one entry"),
        (
            {"name": "v", "mode": "scrape", "query": "x", "scrape_targets": [{"url": "http://a"}]},
            "latency.sources.0",
            "query applies to mode 'prometheus' only",
        ),
        (
            {"name": "v", "prometheus_url": "http://p", "query": "x", "window_seconds": 60},
            "latency.sources.0",
            "drop window_seconds",
        ),
        (
            {"name": "v", "prometheus_url": "http://p", "metric": "x_bucket"},
            "latency.sources.0.metric",
            "without _bucket",
        ),
        ({"name": "v", "prometheus_url": "http://p", "model_label": "le"}, "model_label", "usable"),
        ({"name": "v", "prometheus_url": "http://p", "quantile": 1.5}, "quantile", "less than"),
        (
            {"name": "v", "prometheus_url": "http://p", "min_requests": 0},
            "min_requests",
            "greater than or equal to 1",
        ),
        ({"name": "V!", "prometheus_url": "http://p"}, "latency.sources.0.name", "must match"),
        ({"name": "v", "prometheus_url": "http://p", "windw": 3}, "windw", "unknown field"),
    ],
)
def test_settings_errors_name_the_field(source: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_mapping({"latency": {"sources": [source]}})
    assert field in str(err.value) and needle in str(err.value)


def test_source_names_are_unique() -> None:
    s = {"name": "v", "prometheus_url": "http://p"}
    with pytest.raises(ConfigError, match="repeated: \\['v'\\]"):
        settings_from_mapping({"latency": {"sources": [s, s]}})
