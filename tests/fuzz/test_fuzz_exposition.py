"""Prometheus text: the DCGM/vLLM/LiteLLM page parser on arbitrary and near-valid pages, the
DCGM mapping on arbitrary series, and our renderer's label escaping read back by
``prometheus_client``'s parser."""

from __future__ import annotations

import math
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from aifinops.exposition.catalog import MetricSpec
from aifinops.exposition.render import Family, render
from aifinops.sources.dcgm import gpu_samples_from_series
from aifinops.sources.promtext import decode_page, parse_text
from tests.fuzz.conftest import FUZZ, tried
from tests.fuzz.strategies import label_names, label_values, labelsets, mutated, numbers

METRICS = ["DCGM_FI_DEV_GPU_UTIL", "vllm:prompt_tokens_total", "litellm_spend_metric_total"]


def escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def pages(draw: st.DrawFn) -> str:
    """A page of mostly valid lines, some of them broken."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["sample", "sample", "comment", "blank", "junk"]))
        if kind == "comment":
            lines.append("# " + draw(st.text(max_size=20)).replace("\n", " "))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", " ", "\t"])))
        elif kind == "junk":
            lines.append(draw(st.text(max_size=40)))
        else:
            name = draw(st.sampled_from(METRICS))
            labels = draw(labelsets)
            body = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            value = draw(numbers | st.sampled_from(["NaN", "+Inf", "-Inf", "1_0", "x", ""]))
            ts = draw(st.sampled_from(["", " 1700000000000", " -1", " 1.5", " x"]))
            lines.append(f"{name}{{{body}}} {value}{ts}" if labels else f"{name} {value}{ts}")
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))
    return text


def check_samples(samples: list[tuple[str, Mapping[str, str], float]]) -> None:
    for name, labels, value in samples:
        assert isinstance(name, str) and isinstance(value, float)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())


@FUZZ
@given(st.text(max_size=300) | pages(), st.sampled_from([None, frozenset(METRICS)]))
def test_parse_text_returns_samples_or_value_error(text: str, wanted: frozenset[str] | None):
    tried("promtext.parse_text")
    try:
        samples = parse_text(text, wanted)
    except ValueError as exc:
        assert str(exc).startswith("line ")
        return
    check_samples(samples)


@FUZZ
@given(st.binary(max_size=300) | pages().map(str.encode).flatmap(mutated))
def test_decode_page_returns_text_or_value_error(body: bytes) -> None:
    tried("promtext.decode_page")
    try:
        text = decode_page(body)
    except ValueError:  # UnicodeDecodeError included
        return
    assert not text or text.endswith("\n")


@FUZZ
@given(
    st.dictionaries(label_names, label_values, min_size=1, max_size=4),
    # a marker no message has, followed by anything a label value may hold
    st.text(max_size=30).map(lambda v: "Zq9§" + v),
)
def test_errors_never_quote_a_label_value(labels: dict[str, str], secret: str) -> None:
    """An error message is logged and shown on /readyz: a malformed line must not put a label
    value (an API key hash, an email) in it."""
    tried("promtext.error_privacy")
    body = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
    for broken in (
        f'litellm_spend_metric_total{{{body},user_email="{secret}" 1',  # no closing brace
        f'litellm_spend_metric_total{{{body} user_email="{secret}"}} 1',  # no comma
        f'litellm_spend_metric_total{{user_email="{secret}\\q"}} 1',  # bad escape
        f'litellm_spend_metric_total{{user_email="{secret}"}} one',  # bad value
    ):
        try:
            parse_text(broken + "\n")
        except ValueError as exc:
            assert "Zq9" not in str(exc)


@FUZZ
@given(
    st.lists(st.tuples(labelsets, numbers.map(float)), max_size=10),
    st.sampled_from(["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"]),
)
def test_gpu_samples_are_bounded(series, metric) -> None:
    tried("dcgm.gpu_samples_from_series")
    for s in gpu_samples_from_series(series, metric):
        assert s.uuid
        assert 0.0 <= s.utilization <= 1.0


SPEC = MetricSpec("aifinops_fuzz_usd_total", "counter", "fuzz", ("tenant", "model"))


@FUZZ
@given(
    st.lists(
        st.tuples(st.text(max_size=30), st.text(max_size=30), numbers.map(float)),
        max_size=8,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_rendered_label_values_read_back_exactly(rows) -> None:
    """Any label value (quotes, backslashes, newlines, unicode) survives our escaping, read by
    prometheus_client's parser and by ours."""
    tried("render.label_escaping")
    page = render([Family(SPEC, [((t, m), v) for t, m, v in rows])]).decode()
    ours = {(labels["tenant"], labels["model"]): v for _, labels, v in parse_text(page)}
    theirs = {
        (s.labels["tenant"], s.labels["model"]): s.value
        for f in text_string_to_metric_families(page)
        for s in f.samples
    }
    want = {(t, m): v for t, m, v in rows}
    for got in (ours, theirs):
        assert got.keys() == want.keys()
        for key, v in want.items():
            assert got[key] == v or (math.isnan(got[key]) and math.isnan(v))
