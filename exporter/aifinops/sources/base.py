"""What every source shares: the error type with a bounded reason, and a capped HTTP GET.

A source is an object with a ``name`` and ``async fetch(client) -> data``: ``fetch`` does
the I/O and calls its module's pure ``parse_*`` function. Every failure is raised as
:class:`SourceError` with one of :data:`REASONS`, which the refresh loop counts in
``aifinops_source_errors_total{reason}``; it never sees an httpx or parser exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import httpx

from aifinops.safefile import read_secret_file

Reason = Literal["connect", "timeout", "http_status", "too_large", "parse", "invalid"]
REASONS: tuple[Reason, ...] = ("connect", "timeout", "http_status", "too_large", "parse", "invalid")

T_co = TypeVar("T_co", covariant=True)


class SourceError(Exception):
    """A failed fetch. ``reason`` is a bounded label value; ``str()`` is for the log."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


class Source(Protocol, Generic[T_co]):
    name: str

    async def fetch(self, client: httpx.AsyncClient) -> T_co: ...


def read_bearer_token(path: Path | None) -> dict[str, str]:
    """Authorization header from a token file (never from the config text itself)."""
    if path is None:
        return {}
    try:
        # A regular file within a bound: a FIFO here would stall the refresh (safefile.py).
        token = read_secret_file(path).decode("utf-8", "replace").strip()
    except OSError as exc:
        raise SourceError("invalid", f"cannot read bearer token file: {exc.strerror}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


async def get_bytes(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """GET ``url`` and return the body, refusing bodies over ``max_bytes``.

    The body is streamed so that an oversized response is cut off at the cap instead of
    being held in memory whole. Raises :class:`SourceError` for every failure.
    """
    responded = False
    try:
        async with client.stream(
            "GET", url, params=params, headers=headers, timeout=timeout
        ) as resp:
            responded = True
            if resp.status_code != 200:
                raise SourceError("http_status", f"HTTP {resp.status_code} from {url}")
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise SourceError(
                    "too_large", f"{url} declares {declared} bytes, over the {max_bytes} cap"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise SourceError("too_large", f"{url} sent over the {max_bytes}-byte cap")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise SourceError("timeout", f"timed out after {timeout:g}s: {url}") from None
    except httpx.TransportError as exc:
        # A peer that closes the connection before any response is unreachable ("connect");
        # one that breaks off a body it started (RemoteProtocolError mid-body) sent a
        # truncated payload ("parse").
        truncated = responded and isinstance(exc, httpx.RemoteProtocolError)
        kind: Reason = "parse" if truncated else "connect"
        raise SourceError(kind, f"{type(exc).__name__} for {url}: {exc}") from None
