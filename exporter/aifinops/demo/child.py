"""The demo's fake upstreams in a process of their own (``aifinops-exporter --demo``).

Why: the fakes render their answers per request in Python (about 2 s of CPU for a 10k-GPU
OpenCost answer). In the exporter's process that CPU is taken from its event loop and its
refresh worker, so a large demo stalled its own scrapes for up to 1.5 s. The exporter starts
this module as a child (``python -m aifinops.demo.child --gpus N``), which starts the fakes
(:func:`aifinops.demo.run.start_demo_upstreams`), prints one JSON line — the exporter
configuration sections for them and the demo's finance sections — and serves until its
stdin closes: when the exporter stops it, or dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from aifinops.settings import Settings

START_TIMEOUT_S = 600.0
"""How long the exporter waits for the fakes to start (a 10k-GPU cluster takes seconds)."""
STOP_TIMEOUT_S = 10.0


@dataclass
class DemoProcess:
    """The fakes' child process and what it said: ``config`` (sources, tenancy, token and
    latency sections for the fakes) and ``finance`` (the demo's budgets, initiatives,
    routing and recommendations, for the cluster it simulates, dated when it started)."""

    proc: asyncio.subprocess.Process
    config: dict[str, Any]
    finance: dict[str, Any]

    @classmethod
    async def start(cls, gpus: int = 0, seed: int = 1, host: str = "127.0.0.1") -> DemoProcess:
        """Start the child and wait for its line; raises ``RuntimeError`` when it exits or
        says nothing within :data:`START_TIMEOUT_S`."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aifinops.demo.child",
            "--gpus",
            str(gpus),
            "--seed",
            str(seed),
            "--host",
            host,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        if not line:
            code = await proc.wait()
            raise RuntimeError(f"the demo's fake upstreams exited ({code}) before starting")
        info = json.loads(line)
        return cls(proc, info["config"], info["finance"])

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at these fakes (see :func:`aifinops.demo.run.demo_settings`)."""
        from aifinops.demo.run import settings_for_fakes

        return settings_for_fakes(base, self.config, self.finance)

    async def close(self) -> None:
        """Close the child's stdin (it stops its fakes and exits); kill it if it lingers."""
        if self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def serve(gpus: int, seed: int, host: str) -> None:
    from aifinops.demo.cluster import ClusterSpec
    from aifinops.demo.finance import finance_config
    from aifinops.demo.run import owned_config, start_demo_upstreams

    spec = ClusterSpec.scaled(gpus, seed=seed) if gpus > 0 else None
    upstreams = await start_demo_upstreams(spec, host=host)
    try:
        info = {
            "config": upstreams.config(),
            "finance": {
                **finance_config(upstreams.cluster.sim, time.time()),
                **owned_config(upstreams.cluster.sim),
            },
        }
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        # Serve until the exporter closes our stdin (or dies).
        await asyncio.to_thread(sys.stdin.buffer.read)
    finally:
        await upstreams.close()


def main() -> None:
    from aifinops.logs import configure_logging

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    # Logs to stderr (shared with the exporter); stdout carries the one line.
    configure_logging("warning", "json")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        asyncio.run(serve(args.gpus, args.seed, args.host))


if __name__ == "__main__":
    main()
