"""A scraper in its own process: GET one URL over one keep-alive connection, timing each request.

``python -m bench.scraper --url URL --requests N [--gzip] [--pace-ms MS] [--until-eof]``

Prints one JSON line ``{"ready": true}`` after a first (untimed) request, then, when done,
``{"samples": [[start, seconds, bytes], ...]}``: ``start`` is ``time.monotonic()`` (one clock
for every process on the machine, so the parent can tell which requests ran during a
refresh), ``seconds`` the latency to the last body byte, ``bytes`` the body size as sent (a
gzip body is not decompressed). With ``--until-eof`` it keeps going, at most ``--requests``
times, until its stdin closes. A process of its own, so its CPU time and event loop are not
the exporter's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp


async def scrape(url: str, requests: int, gzip: bool, pace: float, until_eof: bool) -> None:
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    stop = asyncio.Event()
    if until_eof:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def wait_eof() -> None:
            await reader.read()
            stop.set()

        watcher = asyncio.create_task(wait_eof())
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    samples: list[tuple[float, float, int]] = []
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=timeout
    ) as session:
        async with session.get(url, headers=headers) as resp:
            await resp.read()
        print(json.dumps({"ready": True}), flush=True)
        for _ in range(requests):
            if stop.is_set():
                break
            started = time.monotonic()
            async with session.get(url, headers=headers) as resp:
                body = await resp.read()
                if resp.status >= 500:
                    raise SystemExit(f"{url} answered {resp.status}")
            samples.append((started, time.monotonic() - started, len(body)))
            if pace:
                await asyncio.sleep(pace)
    if until_eof:
        await stop.wait()
        watcher.cancel()
    print(json.dumps({"samples": samples}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--pace-ms", type=float, default=0.0)
    parser.add_argument("--until-eof", action="store_true")
    args = parser.parse_args()
    asyncio.run(scrape(args.url, args.requests, args.gzip, args.pace_ms / 1000, args.until_eof))


if __name__ == "__main__":
    main()
