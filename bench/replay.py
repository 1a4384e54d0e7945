"""Record the fake upstreams' answers at one size once, then time one source's fetch and
parse on them, offline: ``python -m bench.replay record --gpus N --out DIR [--rounds R]``,
``python -m bench.replay time --dir DIR --source NAME [--rounds K] [--profile FILE]`` and
``python -m bench.replay refresh --dir DIR [--steady K] [--profile FILE]``.

Why: ``bench.finance`` starts the 10k-GPU fakes (minutes of CPU) for every run; a change to
one parser is measured faster, and with less noise from the machine's other load, on the
same bytes replayed from files through the exporter's own source objects and HTTP client
(an ``httpx.MockTransport`` answers in the recorded order: gauge pages alternate between
their two phases, counter pages move forward). ``time`` prints, per round, the process's CPU
seconds (all threads: the source parses on the CPU worker) and wall seconds of
``source.fetch``, and the process's RSS and peak RSS (VmHWM) after the rounds. ``refresh``
runs whole refreshes of the real refresher (``create_app(..., run_loop=False)``, its HTTP
client swapped for the replaying one) on the recording: the first, the one after the month
query landed, then ``K`` steady ones, each with its CPU and wall seconds, the phase probe's
phases (:mod:`bench.probe`) and RSS; a counter page is served in recorded order and then
held at its last round (record ``--rounds`` at least ``K + 2`` so counters keep moving).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from aifinops.logs import configure_logging

ROUNDS_RECORDED = 3


def _key(request: httpx.Request) -> str:
    return f"{request.method} {request.url.path}?{request.url.query.decode()}"


async def record(gpus: int, out: Path, rounds: int = ROUNDS_RECORDED) -> None:
    from bench.size import Child, bench_settings, bench_sources

    out.mkdir(parents=True, exist_ok=True)
    upstream = await Child.start("bench.upstream", "--gpus", str(gpus), "--tokens")
    try:
        info = await upstream.message(timeout=1800)
        settings = bench_settings(info["config"], info["tenants"])
        index: dict[str, list[dict[str, Any]]] = {}
        seen: dict[str, Path] = {}

        async def hook(response: httpx.Response) -> None:
            body = await response.aread()
            digest = hashlib.sha256(body).hexdigest()[:20]
            path = seen.get(digest)
            if path is None:
                path = out / f"{digest}.body"
                path.write_bytes(body)
                seen[digest] = path
            index.setdefault(_key(response.request), []).append(
                {
                    "status": response.status_code,
                    "content_type": response.headers.get("content-type", ""),
                    "file": path.name,
                }
            )

        async with httpx.AsyncClient(event_hooks={"response": [hook]}, timeout=900) as client:
            for _ in range(rounds):
                for source, _, _ in bench_sources(settings):
                    await source.fetch(client)
        (out / "index.json").write_text(
            json.dumps({"config": info["config"], "tenants": info["tenants"], "answers": index})
        )
        print(f"recorded {sum(len(v) for v in index.values())} answers in {out}")
    finally:
        upstream.kill()


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def _replayer(
    directory: Path, answers: dict[str, list[dict[str, Any]]], *, hold_last: bool = False
) -> Any:
    """An ``httpx.MockTransport`` handler answering each request with its recorded answers in
    order: cycling (``time``) or, with ``hold_last``, staying at the last one (a counter page
    must not go backwards in a run of whole refreshes)."""
    served: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        key = _key(request)
        options = answers.get(key)
        if not options:
            return httpx.Response(404, text=f"not recorded: {key}")
        n = served.get(key, 0)
        served[key] = n + 1
        answer = options[min(n, len(options) - 1) if hold_last else n % len(options)]
        return httpx.Response(
            answer["status"],
            content=(directory / answer["file"]).read_bytes(),
            headers={"content-type": answer["content_type"]},
        )

    return handler


async def time_source(directory: Path, name: str, rounds: int, profile: str | None) -> None:
    from bench.size import bench_settings, bench_sources

    meta = json.loads((directory / "index.json").read_text())
    answers: dict[str, list[dict[str, Any]]] = meta["answers"]
    handler = _replayer(directory, answers)

    settings = bench_settings(meta["config"], meta["tenants"])
    chosen = [s for s, _, _ in bench_sources(settings) if s.name == name]
    if not chosen:
        names = [s.name for s, _, _ in bench_sources(settings)]
        sys.exit(f"no source {name!r}; sources: {', '.join(names)}")
    source = chosen[0]

    profiler = cProfile.Profile() if profile else None
    keep: Any = None
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for i in range(rounds):
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler is not None and i > 0:
                profiler.enable()
            data = await source.fetch(client)
            if profiler is not None:
                profiler.disable()
            print(
                f"round {i}: cpu {time.process_time() - cpu:.3f} s, "
                f"wall {time.perf_counter() - wall:.3f} s"
            )
            keep = data  # the previous round's data is freed as the refresh frees it
    del keep
    # MockTransport's responses keep their bodies in reference cycles: collected here so the
    # RSS read is the source's, not the harness's.
    gc.collect()
    print(f"RSS {_vm('VmRSS'):.1f} MiB, peak {_vm('VmHWM'):.1f} MiB")
    if profiler is not None and profile:
        profiler.dump_stats(profile)


async def time_refreshes(directory: Path, steady: int, profile: str | None) -> None:
    from aiohttp import web

    from aifinops.offload import apply_runtime_settings
    from aifinops.web.app import REFRESHER, create_app
    from bench.probe import PhaseProbe
    from bench.size import bench_settings, bench_sources, timed_cycle

    apply_runtime_settings()
    meta = json.loads((directory / "index.json").read_text())
    settings = bench_settings(meta["config"], meta["tenants"])
    app = create_app(settings, sources=bench_sources(settings), run_loop=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    refresher = app[REFRESHER]
    transport = httpx.MockTransport(_replayer(directory, meta["answers"], hold_last=True))
    profiler = cProfile.Profile() if profile else None
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            refresher._client = client  # the recording answers instead of the fakes
            probe = PhaseProbe()
            with probe.installed():
                for i in range(steady + 2):
                    if profiler is not None and i >= 2:
                        profiler.enable()
                    cpu = time.process_time()
                    cycle = await timed_cycle(refresher, probe)
                    cpu = time.process_time() - cpu
                    if profiler is not None:
                        profiler.disable()
                    if i == 0:
                        await refresher.settle_deferred()  # the month query lands
                    kind = ("first", "month", "steady")[min(i, 2)]
                    phases = " ".join(f"{k} {v:.3f}" for k, v in sorted(cycle.phases.items()))
                    print(
                        f"{kind:6} cpu {cpu:.3f} s, wall {cycle.seconds:.3f} s, "
                        f"RSS {_vm('VmRSS'):.0f} MiB, peak {_vm('VmHWM'):.0f} | {phases}"
                    )
    finally:
        await runner.cleanup()
    if profiler is not None and profile:
        profiler.dump_stats(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--gpus", type=int, default=10_000)
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--rounds", type=int, default=ROUNDS_RECORDED)
    tim = sub.add_parser("time")
    tim.add_argument("--dir", type=Path, required=True)
    tim.add_argument("--source", required=True)
    tim.add_argument("--rounds", type=int, default=4)
    tim.add_argument("--profile")
    ref = sub.add_parser("refresh")
    ref.add_argument("--dir", type=Path, required=True)
    ref.add_argument("--steady", type=int, default=5)
    ref.add_argument("--profile")
    args = parser.parse_args()
    configure_logging("error")
    if args.command == "record":
        asyncio.run(record(args.gpus, args.out, args.rounds))
    elif args.command == "refresh":
        asyncio.run(time_refreshes(args.dir, args.steady, args.profile))
    else:
        asyncio.run(time_source(args.dir, args.source, args.rounds, args.profile))


if __name__ == "__main__":
    main()
