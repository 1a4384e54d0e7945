"""Side by side with the usual approach, on the same data.

* :func:`compare_render`: our renderer against ``prometheus_client.generate_latest`` over a
  custom collector yielding ``GaugeMetricFamily``/``CounterMetricFamily`` with the same
  samples (both start from the same list of families; the samples of the two pages are
  checked equal).
* :func:`compare_text_parser`: our Prometheus text parser against
  ``prometheus_client.parser.text_string_to_metric_families`` on one dcgm-exporter page (the
  samples are checked identical).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from aifinops.exposition.render import Family, render
from aifinops.sources.promtext import parse_text


class FamiliesCollector:
    """What an exporter built on ``prometheus_client`` would register: a custom collector
    that yields metric families holding the report's samples."""

    def __init__(self, families: Sequence[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            if not family.samples:
                continue
            spec = family.spec
            metric: GaugeMetricFamily | CounterMetricFamily
            if spec.type == "counter":
                metric = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
            else:
                metric = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for values, value in family.samples:
                metric.add_metric(list(values), value)
            yield metric


def best_of(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """The least CPU seconds (this thread's) of ``runs`` calls, and the last result: the
    comparisons are single-threaded CPU work, and the best of a few runs is the figure least
    disturbed by whatever else the machine runs."""
    times: list[float] = []
    result: Any = None
    for _ in range(max(1, runs)):
        started = time.thread_time()
        result = fn()
        times.append(time.thread_time() - started)
    return min(times), result


def page_samples(page: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``(name, labels) -> value`` of a text-format page; label order does not matter
    (``prometheus_client`` writes a counter's labels sorted)."""
    return {(name, frozenset(labels.items())): v for name, labels, v in parse_text(page.decode())}


def compare_render(families: Sequence[Family], runs: int) -> dict[str, Any]:
    """Seconds for our render and for ``generate_latest``, their ratio, and whether the two
    pages hold the same samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(families))  # type: ignore[arg-type]
    ours_s, ours = best_of(lambda: render(families), runs)
    theirs_s, theirs = best_of(lambda: generate_latest(registry), max(1, runs // 2))
    a, b = page_samples(ours), page_samples(theirs)
    same = a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )
    return {
        "render_s": ours_s,
        "generate_latest_s": theirs_s,
        "ratio": theirs_s / ours_s if ours_s else math.inf,
        "samples": len(a),
        "identical": same,
    }


def _same_value(x: float, y: float) -> bool:
    return x == y or (math.isnan(x) and math.isnan(y))


def compare_text_parser(text: str, runs: int) -> dict[str, Any]:
    """Seconds for :func:`parse_text` and for ``prometheus_client``'s parser on ``text``.

    Raises ``AssertionError`` when the two disagree on any sample (name, labels, value, order).
    """
    ours_s, ours = best_of(lambda: parse_text(text), runs)
    theirs_s, families = best_of(lambda: list(text_string_to_metric_families(text)), 1)
    # prometheus_client names a counter's sample ``<name>_total`` even where the page says
    # ``<name>`` (dcgm-exporter's counters); ours keeps the name as written.
    theirs = [
        (
            s.name[: -len("_total")]
            if f.type == "counter" and s.name == f"{f.name}_total" and f"{s.name} " not in text
            else s.name,
            s.labels,
            s.value,
        )
        for f in families
        for s in f.samples
    ]
    assert len(ours) == len(theirs), f"{len(ours)} samples against {len(theirs)}"
    for (n1, l1, v1), (n2, l2, v2) in zip(ours, theirs, strict=True):
        assert n1 == n2 and dict(l1) == l2 and _same_value(v1, v2), (n1, l1, v1, n2, l2, v2)
    return {
        "parse_s": ours_s,
        "prometheus_client_s": theirs_s,
        "ratio": theirs_s / ours_s if ours_s else math.inf,
        "samples": len(ours),
        "bytes": len(text.encode()),
        "identical": True,
    }
