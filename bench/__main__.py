"""``python -m bench`` (``make bench``): the exporter at fleet scale, one table.

Each size runs in a fresh process (:mod:`bench.size`) so that peak RSS is that size's own;
the fake upstreams and the scrapers run in processes of their own. Everything is on
127.0.0.1 and bounded: a fixed number of refreshes and requests per size.

Options: ``--sizes 100,1000,10000`` (GPUs), ``--repeat N`` (steady refreshes and latency
rounds per size; medians are printed), ``--quick`` (fewer requests: the smoke test),
``--no-tokens`` (GPU cost only, no LLM token sources), ``--json FILE`` (raw results).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.table import render_table

SIZE_TIMEOUT_S = 600


def run_size(gpus: int, repeat: int, quick: bool, tokens: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.size",
            "--gpus",
            str(gpus),
            "--repeat",
            str(repeat),
            "--out",
            str(out),
        ]
        if quick:
            cmd.append("--quick")
        if not tokens:
            cmd.append("--no-tokens")
        subprocess.run(cmd, check=True, timeout=SIZE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000", help="GPU counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="steady refreshes/rounds per size")
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke test)")
    parser.add_argument("--no-tokens", action="store_true", help="no LLM token sources")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    started = time.monotonic()
    for gpus in sizes:
        print(f">> {gpus} GPUs ...", file=sys.stderr, flush=True)
        size_started = time.monotonic()
        results.append(run_size(gpus, max(1, args.repeat), args.quick, not args.no_tokens))
        print(f"   done in {time.monotonic() - size_started:.0f}s", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(render_table(results))
    print(f"\n(bench ran {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
