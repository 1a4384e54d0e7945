"""One benchmark size, in a fresh process: ``python -m bench.size --gpus N --out FILE``.

Starts the fake upstreams (:mod:`bench.upstream`) in a child process; the exporter as it runs
by default (``server.refresh_process: separate``): its refresh engine here (the real app,
``create_app(..., run_loop=False, link=...)``, its refreshes driven by the bench and published
to the front) and its front (:mod:`bench.front`, ``web/front.py``) as a child process; and
scrapers (:mod:`bench.scraper`) as child processes. The engine's app is also served on
127.0.0.1 from this process, as ``refresh_process: inline`` serves it. It measures:

* refresh cycles (``Refresher.refresh_once``): the first one, then ``--repeat`` steady ones,
  each split into phases (:mod:`bench.probe`);
* ``/metrics`` latency (gzip and plain) with no refresh running, and ``/metrics`` (gzip) and
  the API endpoints while refreshes run back to back: at the front (``idle``, ``busy``) and
  in the refreshing process (``idle_inline``, ``busy_inline``);
* peak RSS (VmHWM) of this process (the engine) and of the front, and their sum, over the
  refreshes and the front's rounds; then, reset, this process's peak over the inline rows
  (one process that refreshes and serves, as ``refresh_process: inline`` runs);
* our renderer against ``generate_latest`` and our text parser against ``prometheus_client``
  on this size's data (:mod:`bench.compare`).

Writes one JSON document to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from aifinops.assemble import build_sources
from aifinops.exposition.families import BuildInfo, cost_families, self_families
from aifinops.logs import configure_logging
from aifinops.offload import apply_runtime_settings
from aifinops.refresh import Refresher
from aifinops.settings import Settings, settings_from_mapping
from aifinops.version import RULES_VERSION, __version__
from aifinops.web.app import REFRESHER, create_app
from aifinops.web.publish import ENGINE_NICE, EngineLink
from bench.compare import compare_render, compare_text_parser
from bench.probe import PhaseProbe

# Endpoints timed besides /metrics: readiness and the JSON API's read endpoints.
API_ENDPOINTS: tuple[str, ...] = (
    "/readyz",
    "/api/v1/summary",
    "/api/v1/recommendations",
    "/api/v1/chargeback?format=json",
)
INITIATIVES = 20  # ROI initiatives, one tenant each
# Larger than the 10k-GPU OpenCost answer (~44 MB); the default cap is 64 MiB.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
PACE_MS = 5.0  # between /metrics requests of the scraper that runs during refreshes
# Between requests to each other endpoint during refreshes: slower, so that four API clients
# do not take the CPU the /metrics figure is about on a 2-core machine.
API_PACE_MS = 50.0


def bench_settings(config: dict[str, Any], tenants: int = 0) -> Settings:
    """The exporter configuration for the fakes, with the bench's overrides: every tenant
    published (``limits.max_tenants`` 2000; the default folds all but 500 into __other__), a
    response cap above the largest payload and, given the cluster's ``tenants``, the finance
    sections of :func:`bench_finance`."""
    config = json.loads(json.dumps(config))
    for source in config["sources"].values():
        source["max_response_bytes"] = MAX_RESPONSE_BYTES
    for source in config.get("tokens", {}).get("sources", []):
        source["max_response_bytes"] = MAX_RESPONSE_BYTES
    config["limits"] = {"max_tenants": 2000}
    config["logging"] = {"level": "warning"}
    if tenants:
        config.update(bench_finance(tenants))
    return settings_from_mapping(config, "bench configuration")


def bench_finance(tenants: int) -> dict[str, Any]:
    """Finance sections at scale: a budget per tenant plus a global one, and
    :data:`INITIATIVES` ROI initiatives, so that the finance step and the API do their full
    work (the tenants are ``ClusterSpec.scaled``'s ``tenant-NNNN``)."""
    names = [f"tenant-{i:04d}" for i in range(tenants)]
    budgets = [{"tenant": n, "amount_usd": 5_000.0 + 10.0 * i} for i, n in enumerate(names)]
    budgets.append({"tenant": "__all__", "amount_usd": 1_000.0 * tenants})
    initiatives = [
        {
            "name": f"initiative-{i:02d}",
            "tenants": [n],
            "benefits": {"hours_saved": 10 + i, "hourly_rate": 60, "headcount": 5},
        }
        for i, n in enumerate(names[:INITIATIVES])
    ]
    return {"budgets": {"time_zone": "UTC", "tenants": budgets}, "initiatives": initiatives}


def vm_hwm_mib() -> float:
    """Peak resident set size of this process, MiB (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5; elsewhere the
    peak then stays the process's whole-life peak)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0–100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def series_count(page: bytes) -> int:
    """Sample lines of a text-format page."""
    comments = page.count(b"\n#") + page.startswith(b"#")
    return page.count(b"\n") - comments


@dataclass
class Child:
    """A child Python process speaking one JSON line per message on stdout."""

    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, module: str, *args: str, pass_fds: tuple[int, ...] = ()) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
            pass_fds=pass_fds,
        )
        return cls(proc)

    async def message(self, timeout: float = 300.0) -> Any:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"child exited ({code}) without answering")
        return json.loads(line)

    async def close(self, timeout: float = 120.0) -> Any:
        """Close its stdin; return its last message, if any."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            last = await self.message(timeout)
        except RuntimeError:
            last = None
        await self.proc.wait()
        return last

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def scrape(url: str, requests: int, *, gzip: bool) -> list[tuple[float, float, int]]:
    """Run a scraper for ``requests`` back-to-back requests; its samples."""
    child = await Child.start(
        "bench.scraper", "--url", url, "--requests", str(requests), *(["--gzip"] if gzip else [])
    )
    try:
        await child.message()
        done = await child.message(timeout=600)
        await child.proc.wait()
    finally:
        child.kill()
    return [tuple(s) for s in done["samples"]]  # type: ignore[misc]


def latency_summary(rounds: list[list[float]]) -> dict[str, float]:
    """Median over rounds of each round's p50 and p99, in milliseconds."""
    return {
        "p50_ms": statistics.median(percentile(r, 50) for r in rounds) * 1000,
        "p99_ms": statistics.median(percentile(r, 99) for r in rounds) * 1000,
        "requests": float(sum(len(r) for r in rounds)),
    }


@dataclass
class Cycle:
    seconds: float
    phases: dict[str, float]
    sources: dict[str, float]
    window: tuple[float, float]


@dataclass
class Run:
    gpus: int
    repeat: int
    quick: bool
    tokens: bool
    result: dict[str, Any] = field(default_factory=dict)


async def timed_cycle(refresher: Refresher, probe: PhaseProbe) -> Cycle:
    """One refresh as the loop runs it (``defer=True``: the month-to-date query is fetched
    beside the cycle, see ``Refresher.refresh_once``)."""
    probe.reset()
    started = time.monotonic()
    snap = await refresher.refresh_once(defer=True)
    ended = time.monotonic()
    sources: dict[str, float] = {}
    for s in snap.status.sources if snap.status else ():
        if not s.up and s.last_error is None:
            continue  # a deferred fetch still in flight
        if not s.up:
            raise RuntimeError(f"source {s.name} failed in the bench: {s.last_error}")
        group = "tokens" if s.name.startswith("tokens:") or s.name == "llm_prices" else s.name
        sources[group] = max(sources.get(group, 0.0), s.duration_seconds)
    return Cycle(ended - started, dict(probe.seconds), sources, (started, ended))


def cycle_summary(cycles: list[Cycle]) -> dict[str, Any]:
    keys = {k for c in cycles for k in c.phases}
    src = {k for c in cycles for k in c.sources}
    return {
        "seconds": statistics.median(c.seconds for c in cycles),
        "phases": {k: statistics.median(c.phases.get(k, 0.0) for c in cycles) for k in keys},
        "sources": {k: statistics.median(c.sources.get(k, 0.0) for c in cycles) for k in src},
        "all_seconds": [c.seconds for c in cycles],
    }


# Left out of the bench: the price list (added back by create_app). The month-to-date query
# (opencost_month: daily sets since the month start, aggregated by tenant) is in, its dates
# from the fakes' clock (bench.upstream.T0).
EXCLUDED_SOURCES = frozenset({"llm_prices"})


def bench_sources(settings: Settings) -> list[tuple[Any, float, float]]:
    """The configured sources less :data:`EXCLUDED_SOURCES`, for ``create_app(sources=...)``."""
    from bench.upstream import T0

    sources = build_sources(settings, clock=lambda: T0)
    return [s for s in sources if s[0].name not in EXCLUDED_SOURCES]


async def during_refreshes(
    base: str, refresher: Refresher, probe: PhaseProbe, refreshes: int, requests: int
) -> tuple[dict[str, dict[str, float]], list[Cycle]]:
    """Scrapers (``/metrics`` gzip, and each API endpoint) pacing requests while
    ``refreshes`` refreshes run back to back; latency of the requests that overlapped one."""
    targets = {"metrics_gzip": (f"{base}/metrics", True)}
    targets |= {path: (f"{base}{path}", False) for path in API_ENDPOINTS}
    children: dict[str, Child] = {}
    cycles: list[Cycle] = []
    try:
        for name, (url, gzip) in targets.items():
            children[name] = await Child.start(
                "bench.scraper",
                "--url",
                url,
                "--requests",
                str(requests),
                "--pace-ms",
                str(PACE_MS if name == "metrics_gzip" else API_PACE_MS),
                "--until-eof",
                *(["--gzip"] if gzip else []),
            )
        for child in children.values():
            await child.message()
        await asyncio.sleep(0.2)
        for _ in range(refreshes):
            cycles.append(await timed_cycle(refresher, probe))
        results = {name: await child.close() for name, child in children.items()}
    finally:
        for child in children.values():
            child.kill()
    windows = [c.window for c in cycles]
    out: dict[str, dict[str, float]] = {}
    for name, done in results.items():
        overlapping = [
            lat
            for start, lat, _ in done["samples"]
            if any(start < end and start + lat > begin for begin, end in windows)
        ]
        out[name] = latency_summary([overlapping])
    return out, cycles


async def run_size(run: Run) -> dict[str, Any]:
    configure_logging("error")
    quick = run.quick
    # As `aifinops-exporter` does at start-up (see aifinops.offload).
    apply_runtime_settings()
    variant = "the code as committed"
    async with AsyncExitStack() as stack:
        upstream = await Child.start(
            "bench.upstream", "--gpus", str(run.gpus), *(["--tokens"] if run.tokens else [])
        )
        stack.callback(upstream.kill)
        info = await upstream.message()
        settings = bench_settings(info["config"], info["tenants"])

        # The engine: this process's app publishes each snapshot on a socketpair to the
        # front, which passes what it cannot answer to the app's unix socket.
        ours, theirs = socket.socketpair()
        link = EngineLink(*await asyncio.open_connection(sock=ours))
        app = create_app(settings, sources=bench_sources(settings), run_loop=False, link=link)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.push_async_callback(link.close)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        inline = f"http://127.0.0.1:{runner.addresses[0][1]}"
        folder = Path(tempfile.mkdtemp(prefix="bench-engine-"))
        stack.callback(shutil.rmtree, folder, True)
        await web.UnixSite(runner, str(folder / "engine.sock")).start()
        (folder / "settings.json").write_text(settings.model_dump_json(exclude_unset=True))
        link.start()
        front = await Child.start(
            "bench.front",
            "--channel-fd",
            str(theirs.fileno()),
            "--engine-socket",
            str(folder / "engine.sock"),
            "--settings",
            str(folder / "settings.json"),
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        stack.callback(front.kill)
        base = (await front.message())["url"]
        refresher = app[REFRESHER]
        probe = PhaseProbe()
        stack.enter_context(probe.installed())

        # The first refresh publishes the cost series; the month-to-date query lands beside
        # it, and the refresh after it publishes budgets and chargeback (the loop starts that
        # one as soon as it lands): "month ready" is the time from the first's start.
        started = time.monotonic()
        first = await timed_cycle(refresher, probe)
        await refresher.settle_deferred()
        month = await timed_cycle(refresher, probe)
        month_ready_s = time.monotonic() - started
        finance = refresher.snapshot.finance
        if finance is None or not finance.infra_available:
            raise RuntimeError("the month-to-date query did not land in the bench")
        steady = [await timed_cycle(refresher, probe) for _ in range(run.repeat)]
        exposition = refresher.snapshot.exposition

        # Each API endpoint asked once, then a refresh: the preparable ones come with the
        # snapshot from then on (the front answers them from the publication, as in steady
        # use; before, it passed each first ask to the engine).
        async with httpx.AsyncClient() as client:
            for path in API_ENDPOINTS:
                (await client.get(f"{base}{path}", timeout=120)).raise_for_status()
        await timed_cycle(refresher, probe)
        await asyncio.sleep(1.0)  # the publication on its way to the front

        # Idle: no refresh running. Request counts keep each round to a few seconds.
        gzip_requests = 200 if quick else 1000
        plain_requests = max(20, min(gzip_requests, int(2e8 / max(1, len(exposition.plain)))))

        async def rows_idle(where: str) -> dict[str, dict[str, float]]:
            rows: dict[str, dict[str, float]] = {}
            for name, path, gzip, requests in (
                ("metrics_gzip", "/metrics", True, gzip_requests),
                ("metrics_plain", "/metrics", False, plain_requests),
                *((path, path, False, gzip_requests) for path in API_ENDPOINTS),
            ):
                rounds = []
                for _ in range(1 if quick else run.repeat):
                    samples = await scrape(f"{where}{path}", requests, gzip=gzip)
                    rounds.append([lat for _, lat, _ in samples])
                rows[name] = latency_summary(rounds)
            return rows

        # The default layout first: the front serves, the engine refreshes at ENGINE_NICE
        # (``aifinops.__main__``). Here the engine shares its process with the bench, whose
        # main thread forks the scrapers: the refresh's worker threads take it (Linux:
        # niceness is per thread), not the whole process.
        idle = await rows_idle(base)
        niced = [
            t.native_id
            for t in threading.enumerate()
            if t is not threading.main_thread() and t.native_id is not None
        ]
        for tid in niced:
            os.setpriority(os.PRIO_PROCESS, tid, ENGINE_NICE)
        busy, busy_cycles = await during_refreshes(
            base, refresher, probe, max(2, run.repeat), 100_000
        )
        # The engine's peak in the default layout: its refreshes and what the front passed
        # it, not the inline rows below (there this process also serves every scrape, as
        # ``refresh_process: inline`` does: its own peak, reported apart).
        rss_engine = vm_hwm_mib()
        for tid in niced:
            with contextlib.suppress(OSError):  # raising priority back may need privilege
                os.setpriority(os.PRIO_PROCESS, tid, 0)
        reset_peak()
        idle_inline = await rows_idle(inline)
        busy_inline, _ = await during_refreshes(
            inline, refresher, probe, max(2, run.repeat), 100_000
        )
        rss_inline = vm_hwm_mib()
        # The front serves the engine's last page: the same bytes, then its own lines (the
        # last publication may still be on its way: a few tries).
        front_page_matches = False
        async with httpx.AsyncClient() as client:
            for _ in range(20):
                served = await client.get(
                    f"{base}/metrics", headers={"Accept-Encoding": "identity"}, timeout=60
                )
                if served.content.startswith(refresher.snapshot.exposition.plain):
                    front_page_matches = True
                    break
                await asyncio.sleep(0.5)
        rss_front = (await front.close())["rss_peak_mib"]

        snap = refresher.snapshot
        build = BuildInfo(__version__, RULES_VERSION, "bench")
        families = cost_families(snap.report, snap.finance) + self_families(snap.status, build)
        render_cmp = compare_render(families, runs=1 if quick else 3)
        async with httpx.AsyncClient() as client:
            page = await client.get(f"{info['dcgm_url']}/metrics", timeout=120)
        parser_cmp = compare_text_parser(page.text, runs=1 if quick else 3)
        await upstream.close()

    return {
        "gpus": info["gpus"],
        "tenants": info["tenants"],
        "models": info["models"],
        "tokens": run.tokens,
        "repeat": run.repeat,
        "variant": variant,
        "first": cycle_summary([first]),
        "month": cycle_summary([month]),
        "month_ready_s": month_ready_s,
        "steady": cycle_summary(steady),
        "busy_cycles": cycle_summary(busy_cycles),
        "phases_probed": sorted(probe.found),
        "series": series_count(exposition.plain),
        "bytes_plain": len(exposition.plain),
        "bytes_gzip": len(exposition.gzipped),
        "idle": idle,
        "busy": busy,
        "idle_inline": idle_inline,
        "busy_inline": busy_inline,
        # Both processes' peaks (the exporter's two processes by default).
        "front_page_matches": front_page_matches,
        "rss_mib": rss_engine + rss_front,
        "rss_engine_mib": rss_engine,
        "rss_front_mib": rss_front,
        # This process's peak while it served the inline rows (``refresh_process: inline``:
        # one process), from its RSS when they started.
        "rss_inline_mib": rss_inline,
        "render_vs_generate_latest": render_cmp,
        "text_parser_vs_prometheus_client": parser_cmp,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-tokens", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    run = Run(args.gpus, args.repeat, args.quick, not args.no_tokens)
    result = asyncio.run(run_size(run))
    print(
        f"peak RSS: engine {result['rss_engine_mib']:.0f} MiB + front "
        f"{result['rss_front_mib']:.0f} MiB = {result['rss_mib']:.0f} MiB",
        file=sys.stderr,
    )
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
