"""Prometheus text format 0.0.4, rendered to bytes once per refresh.

A scrape writes prepared bytes; it never formats a sample. Label values are escaped as the
format requires (backslash, double quote, newline), so a tenant named ``a"b\\c`` or holding a
newline cannot break the page. Families with no samples are left out, so a series that
disappears upstream disappears here.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aifinops.exposition.catalog import MetricSpec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[tuple[str, ...], float]


@dataclass(frozen=True, slots=True)
class Family:
    spec: MetricSpec
    samples: Sequence[Sample]


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render_family(family: Family) -> str:
    spec = family.spec
    lines = [f"# HELP {spec.name} {_escape_help(spec.help)}", f"# TYPE {spec.name} {spec.type}"]
    names = spec.labels
    for values, value in family.samples:
        if len(values) != len(names):
            raise ValueError(f"{spec.name}: expected labels {names}, got {values}")
        if names:
            labels = ",".join(
                f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)
            )
            lines.append(f"{spec.name}{{{labels}}} {format_value(value)}")
        else:
            lines.append(f"{spec.name} {format_value(value)}")
    return "\n".join(lines) + "\n"


def render(families: Iterable[Family]) -> bytes:
    return "".join(render_family(f) for f in families if f.samples).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Exposition:
    """Prepared bytes for one report: plain and gzip-compressed."""

    plain: bytes
    gzipped: bytes

    @classmethod
    def from_bytes(cls, plain: bytes, level: int = 6) -> Exposition:
        return cls(plain=plain, gzipped=gzip.compress(plain, compresslevel=level, mtime=0))
