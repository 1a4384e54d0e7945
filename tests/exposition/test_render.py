"""The exposition renderer: escaping, value formats, and what promtool says about it."""

from prometheus_client.parser import text_string_to_metric_families

from aifinops.exposition import catalog as c
from aifinops.exposition.render import Family, escape_label_value, format_value, render


def test_hostile_label_values_round_trip_through_a_real_parser():
    hostile = ['a"b\\c', "line\nbreak", "tab\there", "ünïcødé", "}{,=", "\\n literal"]
    page = render([Family(c.TENANT_GPU_EFFICIENCY, [((t,), 0.5) for t in hostile])]).decode()
    parsed = [s.labels["tenant"] for f in text_string_to_metric_families(page) for s in f.samples]
    assert parsed == hostile


def test_escape_label_value():
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_label_value("plain") == "plain"


def test_values():
    assert [format_value(v) for v in (1.0, 0.5, float("nan"), float("inf"), -float("inf"))] == [
        "1",
        "0.5",
        "NaN",
        "+Inf",
        "-Inf",
    ]
    assert format_value(1e20) == "1e+20"


def test_empty_families_are_left_out():
    assert render([Family(c.IDLE_GPUS, [])]) == b""


def test_catalog_is_well_formed():
    names = [m.name for m in c.CATALOG]
    assert len(names) == len(set(names))
    for m in c.CATALOG:
        assert m.name.startswith("aifinops_")
        assert (m.type == "counter") == m.name.endswith("_total"), m.name
        assert "_usd" not in m.name or m.name.endswith(
            ("_usd", "_usd_per_hour", "_usd_total", "_usd_per_month", "_usd_per_kwh")
        ), m.name
        assert not {"pod", "user", "email", "request_id"} & set(m.labels), m.name


def test_docs_list_every_series_in_the_catalog():
    from pathlib import Path

    from aifinops.exposition.docs import catalog_markdown

    committed = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert committed == catalog_markdown(), (
        "run: python -m aifinops.exposition.docs > docs/metrics.md"
    )
