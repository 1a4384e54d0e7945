"""The front process, for the benchmark (:mod:`bench.size`), attached to the bench's engine.

``python -m bench.front --channel-fd N --engine-socket PATH --settings FILE``

The bench process runs the engine side in-process (``create_app(..., link=...)``, its
refreshes driven by the bench and published on the channel ``N``, its app served on the unix
socket ``PATH``); this child is the front that ``aifinops-exporter`` starts by default
(``web/front.py``: the same app), serving on 127.0.0.1. It prints one JSON line
``{"url": ..., "pid": ...}`` once the first publication arrived, serves until its stdin
closes, then prints ``{"rss_peak_mib": ..., "rss_mib": ...}`` (VmHWM, VmRSS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from pathlib import Path

from aiohttp import web

from aifinops.logs import configure_logging
from aifinops.offload import apply_runtime_settings
from aifinops.settings import settings_from_mapping
from aifinops.web.front import Engine, create_front
from aifinops.web.limits import limit_connections, runner_options


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def serve(channel_fd: int, engine_socket: Path, settings_file: Path) -> None:
    settings = settings_from_mapping(json.loads(settings_file.read_text()), "bench front")
    engine = Engine([], socket_path=engine_socket)
    await engine.attach(socket.socket(fileno=channel_fd))
    app = create_front(settings, engine)
    runner = web.AppRunner(app, access_log=None, **runner_options())
    await runner.setup()
    limit_connections(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": _pid()}), flush=True)
    await asyncio.to_thread(sys.stdin.buffer.read)
    peak, now = _status_mib("VmHWM"), _status_mib("VmRSS")
    await runner.cleanup()
    await engine.stop()
    print(json.dumps({"rss_peak_mib": peak, "rss_mib": now}), flush=True)


def _pid() -> int:
    import os

    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--engine-socket", type=Path, required=True)
    parser.add_argument("--settings", type=Path, required=True)
    args = parser.parse_args()
    configure_logging("error")
    apply_runtime_settings()
    asyncio.run(serve(args.channel_fd, args.engine_socket, args.settings))


if __name__ == "__main__":
    main()
