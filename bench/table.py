"""The one table: a row per figure, a column per size, and the issue's targets beside the
largest size (they are stated for 10k GPUs on a 2-core machine)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]

COLUMNS = ("figure", "target", "met")  # plus one column per size, between figure and target


@dataclass(frozen=True)
class Row:
    label: str
    value: Callable[[Result], str]
    target: str = ""
    # Whether the largest size meets the target (``None``: no target or not measurable).
    met: Callable[[Sequence[Result]], bool | None] | None = None


def _get(r: Result, *path: str) -> Any:
    cur: Any = r
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def ms(*path: str) -> Callable[[Result], str]:
    def fmt(r: Result) -> str:
        v = _get(r, *path)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    return fmt


def sec(*path: str) -> Callable[[Result], str]:
    def fmt(r: Result) -> str:
        v = _get(r, *path)
        return "n/a" if v is None else f"{v:.3f}"

    return fmt


def size_mb(key: str) -> Callable[[Result], str]:
    return lambda r: f"{r[key] / 1e6:.2f}"


def last_at_most(limit: float, *path: str) -> Callable[[Sequence[Result]], bool | None]:
    def check(results: Sequence[Result]) -> bool | None:
        v = _get(results[-1], *path)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v <= limit

    return check


def last_at_least(limit: float, *path: str) -> Callable[[Sequence[Result]], bool | None]:
    def check(results: Sequence[Result]) -> bool | None:
        v = _get(results[-1], *path)
        return None if v is None else v >= limit

    return check


def scrape_growth(results: Sequence[Result]) -> bool | None:
    """Latency grows by less than the exposition does, smallest to largest size."""
    if len(results) < 2:
        return None
    a, b = results[0], results[-1]
    latency = b["idle"]["metrics_gzip"]["p50_ms"] / a["idle"]["metrics_gzip"]["p50_ms"]
    size = b["bytes_plain"] / a["bytes_plain"]
    return bool(latency < size)


def growth(r: Result, first: Result) -> str:
    latency = r["idle"]["metrics_gzip"]["p50_ms"] / first["idle"]["metrics_gzip"]["p50_ms"]
    size = r["bytes_plain"] / first["bytes_plain"]
    return f"{latency:.1f}x / {size:.0f}x"


def rows(results: Sequence[Result]) -> list[Row]:
    first = results[0]
    phase_rows = [
        Row(f"  fetch+parse {src}", sec("steady", "sources", src))
        for src in ("dcgm", "opencost", "tokens")
        if any(src in r["steady"]["sources"] for r in results)
    ]
    if any("opencost_month" in r.get("month", {}).get("sources", {}) for r in results):
        # Fetched once per budgets interval, beside the first cycle (see "month ready").
        phase_rows.append(
            Row(
                "  fetch+parse opencost_month (beside the first)",
                sec("month", "sources", "opencost_month"),
            )
        )
    phase_rows += [
        Row(f"  {phase}", sec("steady", "phases", phase))
        for phase in ("model", "finance", "families", "cap", "render", "gzip", "render+gzip")
        if any(phase in r["steady"]["phases"] for r in results)
    ]
    return [
        Row("tenants / LLM models", lambda r: f"{r['tenants']} / {r['models']}"),
        Row("series", lambda r: f"{r['series']:,}"),
        Row("exposition MB plain", size_mb("bytes_plain")),
        Row("exposition MB gzip", size_mb("bytes_gzip")),
        Row(
            "refresh first s (cost series)",
            sec("first", "seconds"),
            "<= 1 s",
            last_at_most(1.0, "first", "seconds"),
        ),
        Row("month to date ready s (from the first's start)", sec("month_ready_s")),
        Row(
            "refresh steady s (median)",
            sec("steady", "seconds"),
            "<= 0.5 s",
            last_at_most(0.5, "steady", "seconds"),
        ),
        *phase_rows,
        Row("refresh s while scraped", sec("busy_cycles", "seconds")),
        Row(
            "/metrics gzip p50 ms, idle",
            ms("idle", "metrics_gzip", "p50_ms"),
            "<= 1 ms",
            last_at_most(1.0, "idle", "metrics_gzip", "p50_ms"),
        ),
        Row(
            "/metrics gzip p99 ms, idle",
            ms("idle", "metrics_gzip", "p99_ms"),
            "<= 5 ms",
            last_at_most(5.0, "idle", "metrics_gzip", "p99_ms"),
        ),
        Row("/metrics plain p50 ms, idle", ms("idle", "metrics_plain", "p50_ms")),
        Row("/metrics plain p99 ms, idle", ms("idle", "metrics_plain", "p99_ms")),
        Row("/metrics gzip p50 ms, in refresh", ms("busy", "metrics_gzip", "p50_ms")),
        Row(
            "/metrics gzip p99 ms, in refresh",
            ms("busy", "metrics_gzip", "p99_ms"),
            "<= 10 ms",
            last_at_most(10.0, "busy", "metrics_gzip", "p99_ms"),
        ),
        *(
            row
            for path in api_paths(results)
            for row in (
                Row(f"{path} p50 ms, idle", ms("idle", path, "p50_ms")),
                Row(f"{path} p99 ms, idle", ms("idle", path, "p99_ms")),
                Row(
                    f"{path} p99 ms, in refresh",
                    ms("busy", path, "p99_ms"),
                    *(
                        ("<= 50 ms", last_at_most(50.0, "busy", path, "p99_ms"))
                        if path.startswith("/api/")
                        else ()
                    ),
                ),
            )
        ),
        # The same requests to one process that both serves and refreshes
        # (server.refresh_process: inline), for comparison.
        *(
            Row(f"inline: {name} p99 ms, in refresh", ms("busy_inline", name, "p99_ms"))
            for name in ("metrics_gzip", *api_paths(results))
            if all("busy_inline" in r for r in results)
        ),
        Row(
            "scrape p50 growth / size growth",
            lambda r: growth(r, first),
            "latency < size",
            scrape_growth,
        ),
        Row(
            "peak RSS MiB",
            lambda r: f"{r['rss_mib']:.0f}",
            "<= 300 MiB",
            last_at_most(300.0, "rss_mib"),
        ),
        *(
            [
                Row("  of it the refresh engine", lambda r: f"{r['rss_engine_mib']:.0f}"),
                Row("  of it the front", lambda r: f"{r['rss_front_mib']:.0f}"),
            ]
            if all("rss_front_mib" in r for r in results)
            else []
        ),
        *(
            [Row("inline: peak RSS MiB (one process)", lambda r: f"{r['rss_inline_mib']:.0f}")]
            if all("rss_inline_mib" in r for r in results)
            else []
        ),
        Row("render s (ours)", sec("render_vs_generate_latest", "render_s")),
        Row("generate_latest s", sec("render_vs_generate_latest", "generate_latest_s")),
        Row(
            "generate_latest / render",
            lambda r: (
                f"{r['render_vs_generate_latest']['ratio']:.1f}x"
                + ("" if r["render_vs_generate_latest"]["identical"] else " (samples differ!)")
            ),
            ">= 10x",
            last_at_least(10.0, "render_vs_generate_latest", "ratio"),
        ),
        Row(
            "DCGM text samples",
            lambda r: f"{r['text_parser_vs_prometheus_client']['samples']:,}",
        ),
        Row("DCGM parse s (ours)", sec("text_parser_vs_prometheus_client", "parse_s")),
        Row(
            "DCGM parse s (prometheus_client)",
            sec("text_parser_vs_prometheus_client", "prometheus_client_s"),
        ),
        Row(
            "prometheus_client / ours",
            lambda r: f"{r['text_parser_vs_prometheus_client']['ratio']:.1f}x",
            ">= 20x, same samples",
            last_at_least(20.0, "text_parser_vs_prometheus_client", "ratio"),
        ),
    ]


def api_paths(results: Sequence[Result]) -> list[str]:
    return [k for k in results[0]["idle"] if k.startswith("/")]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def render_table(results: Sequence[Result]) -> str:
    """The table as text; the targets are judged on the last (largest) size."""
    if not results:
        return "(no results)"
    header = [
        COLUMNS[0],
        *(f"{r['gpus']:,} GPUs" for r in results),
        f"target ({results[-1]['gpus']:,} GPUs)",
        "met",
    ]
    body: list[list[str]] = []
    for row in rows(results):
        met = row.met(results) if row.met else None
        mark = "" if row.met is None else ("n/a" if met is None else ("yes" if met else "NO"))
        body.append([row.label, *(row.value(r) for r in results), row.target, mark])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:-2], widths[1:-2], strict=True)]
        tail = [cells[-2].ljust(widths[-2]), cells[-1].ljust(widths[-1])]
        return "| " + " | ".join([first, *rest, *tail]) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = [fmt(header), sep, *(fmt(b) for b in body)]
    notes = [
        "",
        f"machine: {machine()}; medians of {results[-1]['repeat']} runs; "
        f"tokens {'on' if results[-1]['tokens'] else 'off'}; all on 127.0.0.1",
        f"code measured: {results[-1]['variant']}",
        "phases measured: " + ", ".join(results[-1]["phases_probed"]),
    ]
    return "\n".join(lines + notes)
