"""Run the real CLI (``python -m aifinops``) as a child process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m aifinops *args`` to its end (a check, or a start-up that must fail)."""
    return subprocess.run(
        [sys.executable, "-m", "aifinops", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Exporter:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def wait_until(self, path: str, status: int, timeout: float = 60.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {self.stderr()}")
            try:
                resp = self.get(path)
                if resp.status_code == status:
                    return resp
                last = resp.status_code
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{path} never answered {status} (last: {last}): {self.stderr()}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """Clean-up: SIGTERM if still running, then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def start_exporter(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Exporter:
    port = free_port()
    stderr_path = tmp / f"exporter-{port}.stderr"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AIFINOPS__")}
    full_env.update(env or {})
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aifinops", "--port", str(port), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=full_env,
        )
    return Exporter(proc, port, stderr_path)


def assert_clean_stderr(text: str) -> None:
    """No traceback, no asyncio complaint, no log line at error level."""
    for bad in ("Traceback", "Task was destroyed", "Unclosed", "was never awaited", '"exception"'):
        assert bad not in text, f"{bad!r} in stderr:\n{text[-3000:]}"
    assert '"level": "error"' not in text, text[-3000:]
