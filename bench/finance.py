"""The refresh's phases at one size, without the latency rounds:
``python -m bench.finance --gpus N [--steady K] [--profile FILE]``.

Starts the fake upstreams (:mod:`bench.upstream`) in a child process and the real refresher
here (``create_app(..., run_loop=False)``, not served), runs the first refresh (the month
query beside it), the one after the month landed, and ``K`` steady ones with the phase probe
(:mod:`bench.probe`), then the finance step alone on the last refresh's inputs, in this
thread, ``K`` times 30 s apart, in CPU seconds of the thread (and, with ``--profile``, under
cProfile, written to FILE for ``python -m pstats``). ``--oracle-rev REV`` runs the finance
step of another git revision beside this one on the same inputs, across a local midnight,
and says which figures differ (none: the same) and the CPU seconds of each. Prints one JSON
document. For profiling one change against another on a loaded machine: one process,
minutes, no scrapers; CPU time, which the machine's other load disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import statistics
import subprocess
import sys
import time
import types
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from aifinops.logs import configure_logging
from aifinops.model import finance as finance_module
from aifinops.offload import apply_runtime_settings
from aifinops.web.app import REFRESHER, create_app
from bench.probe import PhaseProbe
from bench.size import Child, bench_settings, bench_sources, cycle_summary, timed_cycle, vm_hwm_mib


async def run(
    gpus: int, steady: int, tokens: bool, profile: str | None, oracle_rev: str | None
) -> dict[str, Any]:
    configure_logging("error")
    apply_runtime_settings()
    async with AsyncExitStack() as stack:
        upstream = await Child.start(
            "bench.upstream", "--gpus", str(gpus), *(["--tokens"] if tokens else [])
        )
        stack.callback(upstream.kill)
        info = await upstream.message(timeout=1800)
        settings = bench_settings(info["config"], info["tenants"])
        app = create_app(settings, sources=bench_sources(settings), run_loop=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()  # the refresher is made at start-up
        stack.push_async_callback(runner.cleanup)
        refresher = app[REFRESHER]
        probe = PhaseProbe()
        stack.enter_context(probe.installed())
        started = time.monotonic()
        first = await timed_cycle(refresher, probe)  # cost series; the month lands beside it
        settle = getattr(refresher, "settle_deferred", None)  # absent before the deferral
        if settle is not None:
            await settle()
        month = await timed_cycle(refresher, probe)
        month_ready_s = time.monotonic() - started
        cycles = [await timed_cycle(refresher, probe) for _ in range(steady)]
        rss = vm_hwm_mib()

        # The finance step alone, on this thread: the last refresh's inputs, 30 s apart.
        report = refresher.snapshot.report
        assert report is not None
        _, _, inputs = refresher._inputs()
        ctx = refresher.context
        state = refresher._finance_state
        now = refresher._clock()
        alone: list[float] = []
        profiler = cProfile.Profile() if profile else None
        for i in range(steady):
            at = now + 30.0 * (i + 1)
            started = time.thread_time()
            if profiler is not None:
                profiler.enable()
            _, state = finance_module.build_finance(
                report, inputs, ctx.finance, ctx.resolver, ctx.pricer.at(at), state, at
            )
            if profiler is not None:
                profiler.disable()
            alone.append(time.thread_time() - started)
        if profiler is not None and profile:
            profiler.dump_stats(profile)
        checked = None
        if oracle_rev:
            checked = check_oracle(oracle_rev, report, inputs, refresher, now, profile)
        await upstream.close()
    return {
        "gpus": info["gpus"],
        "tenants": info["tenants"],
        "first": cycle_summary([first]),
        "month": cycle_summary([month]),
        "month_ready_s": month_ready_s,
        "steady": cycle_summary(cycles),
        "finance_alone_cpu_s": alone,
        "finance_alone_cpu_median_s": statistics.median(alone) if alone else None,
        "rss_mib": rss,
        "oracle": checked,
    }


# Compared between the two builds: every figure but the lookups (functions).
FIGURES = (
    "infra_available",
    "month_to_date",
    "tenant_month_to_date",
    "budgets",
    "budget_notes",
    "cluster",
    "initiatives",
    "routing",
    "routing_window_seconds",
    "recommendations",
    "periods",
    "idle_cost_usd_per_hour",
    "monthly_tokens",
    "books",
    "ledger_since",
)


def check_oracle(
    rev: str, report: Any, inputs: Any, refresher: Any, now: float, profile: str | None
) -> dict[str, Any]:
    """The finance step of git revision ``rev`` (loaded beside this one) against this one,
    refresh after refresh on the same inputs, across a local midnight: the fields of
    :data:`FIGURES` that differ at any step (none: the same figures), and each one's CPU
    seconds per step (thread time: the machine's other load counts less than in wall time).
    With ``profile``, the second and third steps of each under cProfile (``FILE.new``,
    ``FILE.oracle``)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:exporter/aifinops/model/finance.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    oracle = types.ModuleType("aifinops.model._finance_oracle")
    sys.modules[oracle.__name__] = oracle  # dataclasses look their module up
    exec(compile(source, "finance_oracle.py", "exec"), oracle.__dict__)
    ctx = refresher.context
    fin = ctx.finance
    midnight = (now // 86400 + 1) * 86400  # the bench's time zone is UTC
    steps = [now + 30.0 * i for i in range(1, 4)] + [midnight - 20.0, midnight + 10.0]
    steps += [midnight + 40.0, midnight + 70.0]
    new_state, old_state = refresher._finance_state, oracle.FinanceState()
    new_state = finance_module.FinanceState()
    differ: set[str] = set()
    timings: dict[str, list[float]] = {"new": [], "oracle": []}
    profiles = {"new": cProfile.Profile(), "oracle": cProfile.Profile()}
    for i, at in enumerate(steps):
        pricer = ctx.pricer.at(at)
        steady = 0 < i < 3  # profiled: the steady steps, not the first folds
        t0 = time.thread_time()
        with profiles["new"] if steady and profile else contextlib.nullcontext():
            new, new_state = finance_module.build_finance(
                report, inputs, fin, ctx.resolver, pricer, new_state, at
            )
        t1 = time.thread_time()
        with profiles["oracle"] if steady and profile else contextlib.nullcontext():
            old, old_state = oracle.build_finance(
                report, inputs, fin, ctx.resolver, pricer, old_state, at
            )
        t2 = time.thread_time()
        timings["new"].append(t1 - t0)
        timings["oracle"].append(t2 - t1)
        differ |= {f for f in FIGURES if getattr(new, f) != getattr(old, f)}
    if profile:
        for name, prof in profiles.items():
            prof.dump_stats(f"{profile}.{name}")
    return {"rev": rev, "steps": len(steps), "differ": sorted(differ), "cpu_seconds": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--steady", type=int, default=3)
    parser.add_argument("--no-tokens", action="store_true")
    parser.add_argument("--profile")
    parser.add_argument("--oracle-rev", help="compare with the finance step of this git rev")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.gpus, max(1, args.steady), not args.no_tokens, args.profile, args.oracle_rev)
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
