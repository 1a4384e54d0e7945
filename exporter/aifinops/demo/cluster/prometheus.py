"""Prometheus as it stores what it scraped from dcgm-exporter: the series of a DCGM family with
the target labels added, and the HTTP API's instant-query JSON for a vector selector (just
enough PromQL for the fake Prometheus: a name and label matchers, nothing else).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from aifinops.demo.cluster import dcgm
from aifinops.demo.cluster.activity import Sample, samples
from aifinops.demo.cluster.dcgm import DCGM_FAMILY_NAMES
from aifinops.demo.cluster.layout import Layout


def _prom_value(value: float) -> str:
    """Prometheus' JSON sample value: ``strconv.FormatFloat(v, 'f', -1, 64)``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(value, ".17f").rstrip("0").rstrip(".")
    return text


def series(layout: Layout, now: float, metrics: Sequence[str]) -> list[tuple[dict[str, str], str]]:
    """Every series of the DCGM families ``metrics`` (each sample rendered once) as a
    Prometheus scraping dcgm-exporter stores it: the exposition labels plus ``instance``,
    ``job`` and ``cluster``; with ``prometheus_honor_labels=False`` the pod labels become
    ``exported_*`` and the target's own ``namespace``/``pod``/``container`` take their place."""
    wanted = [m for m in metrics if m in DCGM_FAMILY_NAMES]
    if not wanted:
        return []
    rendered = [(s, dcgm.emitted(layout, s, now)) for s in samples(layout, now)]
    shared = (
        layout.shared.dcgm_rows(now, layout.spec.driver_version)
        if layout.shared is not None
        else []
    )
    return [
        row
        for metric in wanted
        for row in [
            row
            for s, emitted in rendered
            if metric in emitted
            for row in _rows(layout, s, metric, emitted[metric])
        ]
        + [
            row
            for family, pairs, value in shared
            if family == metric
            for row in _stored(layout, metric, dict(pairs), value)
        ]
    ]


def _rows(layout: Layout, s: Sample, metric: str, text: str) -> list[tuple[dict[str, str], str]]:
    """One sample's series of ``metric`` (value ``text``) as Prometheus stores it: once,
    or twice with ``prometheus_duplicate_jobs``."""
    gpu = s.gpu
    new = layout.dcgm_generation(gpu.node) != "4.8"
    labels = {
        "__name__": metric,
        "gpu": str(gpu.index),
        "UUID": gpu.uuid,
        "pci_bus_id": gpu.pci_bus_id,
        "device": f"nvidia{gpu.index}",
        "modelName": gpu.model.name,
    }
    if s.mig is not None:
        labels["GPU_I_PROFILE"] = s.mig.profile
        labels["GPU_I_ID"] = s.mig.gi_id
    labels["hostname" if new else "Hostname"] = gpu.node
    driver = "DCGM_FI_SYSTEM_DRIVER_VERSION" if new else "DCGM_FI_DRIVER_VERSION"
    labels[driver] = layout.spec.driver_version
    pod_labels: dict[str, str] = {}
    if s.run is not None:
        pod_labels = {
            "container": s.run.pod.container,
            "namespace": s.run.pod.namespace,
            "pod": s.run.name,
        }
    return _stored(layout, metric, {**labels, **pod_labels}, text)


# The page's labels a Prometheus target's own labels collide with (renamed unless honored).
_POD_LABELS = ("container", "namespace", "pod")


def _stored(
    layout: Layout, metric: str, exposition: dict[str, str], text: str
) -> list[tuple[dict[str, str], str]]:
    """One series of ``metric`` as Prometheus stores it from the page's labels ``exposition``:
    target labels added; with ``prometheus_honor_labels=False`` the pod labels renamed
    ``exported_*``; twice with ``prometheus_duplicate_jobs``."""
    out: list[tuple[dict[str, str], str]] = []
    host = exposition.get("Hostname") or exposition["hostname"]
    node = layout.node_by_name[host]
    pod_labels = {k: v for k, v in exposition.items() if k in _POD_LABELS}
    labels = {"__name__": metric}
    labels.update({k: v for k, v in exposition.items() if k not in _POD_LABELS})
    if layout.spec.prometheus_honor_labels:
        labels.update(pod_labels)
    else:
        labels.update({f"exported_{k}": v for k, v in pod_labels.items()})
        labels.update(
            {
                "container": "nvidia-dcgm-exporter",
                "namespace": "gpu-operator",
                "pod": f"nvidia-dcgm-exporter-{node.provider_id[-5:]}",
                "service": "nvidia-dcgm-exporter",
                "endpoint": "gpu-metrics",
            }
        )
    labels["instance"] = f"{node.ip}:9400"
    labels["job"] = "nvidia-dcgm-exporter"
    labels["cluster"] = layout.spec.cluster_name
    value = float(text)
    out.append((labels, _prom_value(value)))
    if layout.spec.prometheus_duplicate_jobs:
        out.append(({**labels, "job": "gpu-operator/nvidia-dcgm-exporter"}, _prom_value(value)))
    return out


def vector(layout: Layout, now: float, promql: str) -> dict[str, Any]:
    """The Prometheus HTTP API JSON for an instant query at ``now``.

    Understands a vector selector: a metric name optionally followed by ``{l="v",...}``
    matchers (``=``, ``!=``, ``=~``, ``!~``), or ``{__name__="...",...}`` /
    ``{__name__=~"A|B",...}``. A valid selector of
    a metric the sim does not have answers an empty vector, as Prometheus does; anything
    else (functions, operators, syntax errors) answers Prometheus' ``bad_data`` error JSON,
    which the fake server sends with status 400.
    """
    try:
        name, matchers = parse_selector(promql)
    except ValueError as exc:
        return {
            "status": "error",
            "errorType": "bad_data",
            "error": f'invalid parameter "query": {exc}',
        }
    result: list[dict[str, Any]] = []
    ts = round(now, 3)
    # A selector without a name (``{__name__=~"A|B",...}``): the families it matches.
    families = [name] if name is not None else sorted(DCGM_FAMILY_NAMES)
    name_matchers = [(op, v) for k, op, v in matchers if k == "__name__"]
    families = [f for f in families if all(_matches(f, op, v) for op, v in name_matchers)]
    for labels, value in series(layout, now, families):
        if all(_matches(labels.get(k, ""), op, v) for k, op, v in matchers):
            result.append({"metric": labels, "value": [ts, value]})
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OP = re.compile(r"=~|!~|!=|=")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
Matcher = tuple[str, str, str]


def parse_selector(promql: str) -> tuple[str | None, list[Matcher]]:
    """Parse ``name{l="v",...}`` / ``{__name__="name",...}`` into (name, matchers).

    Returns name ``None`` when no equality on ``__name__`` pins the metric (then a
    ``__name__=~"a|b"`` matcher, if any, is among the matchers). Raises
    ``ValueError`` (with a Prometheus-like message) for anything that is not a plain selector.
    """
    text = promql.strip()
    if not text:
        raise ValueError("1:1: parse error: no expression found in input")
    pos = 0
    name: str | None = None
    m = _NAME.match(text)
    if m:
        name = m.group(0)
        pos = m.end()
    matchers: list[Matcher] = []
    rest = text[pos:].lstrip()
    if rest.startswith("{"):
        body_pos = len(text) - len(rest) + 1
        while True:
            while body_pos < len(text) and text[body_pos] in " \t\n":
                body_pos += 1
            if body_pos < len(text) and text[body_pos] == "}":
                body_pos += 1
                break
            lm = _LABEL.match(text, body_pos)
            if not lm:
                raise ValueError(
                    f"1:{body_pos + 1}: parse error: unexpected character in label matching"
                )
            body_pos = lm.end()
            while body_pos < len(text) and text[body_pos] == " ":
                body_pos += 1
            om = _OP.match(text, body_pos)
            if not om:
                raise ValueError(f"1:{body_pos + 1}: parse error: expected label matching operator")
            body_pos = om.end()
            while body_pos < len(text) and text[body_pos] == " ":
                body_pos += 1
            sm = _STRING.match(text, body_pos)
            if not sm:
                raise ValueError(f"1:{body_pos + 1}: parse error: expected string label value")
            value = _unescape(sm.group(1))
            matchers.append((lm.group(0), om.group(0), value))
            body_pos = sm.end()
            while body_pos < len(text) and text[body_pos] in " \t\n":
                body_pos += 1
            if body_pos < len(text) and text[body_pos] == ",":
                body_pos += 1
                continue
            if body_pos < len(text) and text[body_pos] == "}":
                body_pos += 1
                break
            raise ValueError(f"1:{body_pos + 1}: parse error: unexpected end of label matchers")
        rest = text[body_pos:]
    if rest.strip():
        raise ValueError(
            f"1:{len(text) - len(rest.lstrip()) + 1}: parse error: the fake Prometheus "
            "understands only vector selectors"
        )
    for label, op, value in matchers:
        if label == "__name__" and op == "=":
            if name is not None and name != value:
                return None, matchers
            name = value
    if name is None and not any(op in ("=", "=~") and v for _, op, v in matchers):
        raise ValueError(
            "1:1: parse error: vector selector must contain at least one non-empty matcher"
        )
    # An equality on __name__ is the name; any other __name__ matcher (``=~``, ``!=``) stays
    # a matcher, applied to every family.
    return name, [x for x in matchers if not (x[0] == "__name__" and x[1] == "=")]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def _matches(actual: str, op: str, wanted: str) -> bool:
    if op == "=":
        return actual == wanted
    if op == "!=":
        return actual != wanted
    matched = re.fullmatch(wanted, actual) is not None
    return matched if op == "=~" else not matched
