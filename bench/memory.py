"""Where the peak RSS of a refresh comes from: ``python -m bench.memory --gpus N [--trace]``,
or offline on a recording: ``python -m bench.memory --replay DIR [--steady K] [--trace]``.

Runs the refreshes of :mod:`bench.finance` (first, the month query, the one after it, then
``--steady K``) with the stages of ``Refresher.refresh_once`` wrapped: the fetches (a group:
they run concurrently), freeing the old data, the model, finance, render. At each stage's
start the kernel's peak (VmHWM) is reset (``/proc/self/clear_refs`` 5) and read at its end,
so each stage's own peak and the RSS it leaves are printed. With ``--trace``, tracemalloc
(slower, and its own memory counts in RSS) adds each stage's peak of Python allocations and
the top allocating lines live at the end of the stage that set the process's peak. One
process, no scrapers: for comparing one change with another, one process at a time.

``--replay DIR`` answers from a recording of ``bench.replay record`` instead of starting the
fakes (minutes of CPU at 10k GPUs): each body is streamed from its file in socket-sized
chunks, as a connection delivers it, so the harness holds no bodies and the figures are the
exporter's (``bench.replay``'s in-memory responses hold every body whole). A counter page is
served in recorded order, then held at its last round. ``--api``: every refresh prepares the
API's default answers, as when clients ask for them (``make bench`` does), and its snapshot
holds them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tracemalloc
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from aifinops import refresh as refresh_module
from aifinops.logs import configure_logging
from aifinops.offload import apply_runtime_settings
from aifinops.web.api import API_READ_CACHE, PREPARABLE
from aifinops.web.app import REFRESHER, create_app
from bench.size import Child, bench_settings, bench_sources

# What a socket read hands httpx at a time (httpcore reads up to 64 KiB).
REPLAY_CHUNK = 64 * 1024


class _FileStream(httpx.AsyncByteStream):
    """One recorded body, read from its file a chunk at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def __aiter__(self) -> Any:
        with self._path.open("rb") as f:
            while chunk := f.read(REPLAY_CHUNK):
                yield chunk
                await asyncio.sleep(0)  # as a socket read would: other fetches go on


def _replaying_client(directory: Path, answers: dict[str, list[dict[str, Any]]]) -> Any:
    served: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        key = f"{request.method} {request.url.path}?{request.url.query.decode()}"
        options = answers.get(key)
        if not options:
            return httpx.Response(404, text=f"not recorded: {key}")
        n = served.get(key, 0)
        served[key] = n + 1
        answer = options[min(n, len(options) - 1)]
        path = directory / answer["file"]
        headers = {
            "content-type": answer["content_type"],
            "content-length": str(path.stat().st_size),
        }
        return httpx.Response(answer["status"], headers=headers, stream=_FileStream(path))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with suppress(OSError):  # not Linux, or not allowed: each stage's peak is then the process's
        Path("/proc/self/clear_refs").write_text("5")
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()


class Stages:
    """Per stage: its own peak RSS, the RSS after it, and (tracing) its Python peak."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.rows: list[dict[str, Any]] = []
        self.cycle = ""
        self._open = 0
        self._names: list[str] = []
        self.top: list[str] = []
        self._top_peak = 0.0

    def enter(self, name: str) -> None:
        if self._open == 0:
            self._names = []
            # The peak so far is kept in the rows; the stage starts from where RSS is now.
            _reset_peak()
            self._before = _status("VmRSS")
        self._open += 1
        self._names.append(name)

    def leave(self) -> None:
        self._open -= 1
        if self._open:
            return
        row: dict[str, Any] = {
            "cycle": self.cycle,
            "stage": "+".join(sorted(set(self._names))),
            "rss_before_mib": round(self._before, 1),
            "peak_mib": round(_status("VmHWM"), 1),
            "rss_after_mib": round(_status("VmRSS"), 1),
        }
        if self.trace:
            _, peak = tracemalloc.get_traced_memory()
            row["py_peak_mib"] = round(peak / 2**20, 1)
            # The stages that set the peak so far or grew RSS most: what is live after them.
            if row["peak_mib"] > self._top_peak or row["rss_after_mib"] - self._before > 40:
                self._top_peak = max(self._top_peak, row["peak_mib"])
                snap = tracemalloc.take_snapshot()
                self.top += [
                    f"{row['cycle']}/{row['stage']}: {s.size / 2**20:.1f} MiB {s.count} blocks "
                    f"{s.traceback[0].filename.split('/aifinops/')[-1]}:{s.traceback[0].lineno}"
                    for s in snap.statistics("lineno")[:20]
                ]
        self.rows.append(row)

    def wrap_async(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            label = name
            if name == "fetch" and len(args) > 1:
                label = f"fetch {args[1].source.name.split(':')[0]}"
            self.enter(label)
            try:
                return await fn(*args, **kwargs)
            finally:
                self.leave()

        return wrapped


async def run(
    gpus: int,
    steady: int,
    tokens: bool,
    trace: bool,
    replay: Path | None = None,
    api: bool = False,
) -> dict[str, Any]:
    configure_logging("error")
    apply_runtime_settings()
    stages = Stages(trace)
    cls = refresh_module.Refresher
    # A method the code does not have (yet, or any more) is left out.
    labels = {
        "_fetch_one": "fetch",
        "_bury": "free old",
        "_finance": "finance",
        "_render_page": "render",
        "_prepared": "prepare API answers",
    }
    saved = {n: getattr(cls, n) for n in labels if hasattr(cls, n)}
    for name, fn in saved.items():
        setattr(cls, name, stages.wrap_async(labels[name], fn))
    build_report = getattr(refresh_module, "build_report")  # noqa: B009 (not re-exported)

    @functools.wraps(build_report)
    def model(*args: Any, **kwargs: Any) -> Any:
        stages.enter("model")
        try:
            return build_report(*args, **kwargs)
        finally:
            stages.leave()

    setattr(refresh_module, "build_report", model)  # noqa: B010
    try:
        async with AsyncExitStack() as stack:
            upstream: Child | None = None
            if replay is None:
                upstream = await Child.start(
                    "bench.upstream", "--gpus", str(gpus), *(["--tokens"] if tokens else [])
                )
                stack.callback(upstream.kill)
                info = await upstream.message(timeout=1800)
            else:
                info = json.loads((replay / "index.json").read_text())
                info.setdefault("gpus", gpus)
            if trace:
                tracemalloc.start(1)
            settings = bench_settings(info["config"], info["tenants"])
            app = create_app(settings, sources=bench_sources(settings), run_loop=False)
            if api:
                # As if every preparable request had been asked (make bench asks them): each
                # refresh prepares their answers, which its snapshot then holds.
                app[API_READ_CACHE].wanted = lambda: frozenset(PREPARABLE)  # type: ignore[method-assign]
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            refresher = app[REFRESHER]
            if replay is not None:
                client = _replaying_client(replay, info.pop("answers"))
                stack.push_async_callback(client.aclose)
                refresher._client = client  # the recording answers instead of the fakes
            base = _status("VmRSS")
            for i, name in enumerate(["first", "month", *[f"steady{k}" for k in range(steady)]]):
                stages.cycle = name
                await refresher.refresh_once(defer=True)
                if i == 0:
                    stages.cycle = "month query"
                    await refresher.settle_deferred()
            hwm_total = max(r["peak_mib"] for r in stages.rows)
            if upstream is not None:
                await upstream.close()
    finally:
        for n, fn in saved.items():
            setattr(cls, n, fn)
        setattr(refresh_module, "build_report", build_report)  # noqa: B010
    return {
        "gpus": info["gpus"],
        "tenants": info["tenants"],
        "rss_after_start_mib": round(base, 1),
        "peak_mib": hwm_total,
        "stages": stages.rows,
        "top_at_peak": stages.top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--replay", type=Path, help="a bench.replay recording to answer from")
    parser.add_argument("--steady", type=int, default=2)
    parser.add_argument("--no-tokens", action="store_true")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument(
        "--api", action="store_true", help="prepare every preparable API answer each refresh"
    )
    args = parser.parse_args()
    if not args.gpus and args.replay is None:
        parser.error("--gpus or --replay is required")
    result = asyncio.run(
        run(args.gpus, max(0, args.steady), not args.no_tokens, args.trace, args.replay, args.api)
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
