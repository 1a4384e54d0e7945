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
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SourceError("invalid", f"cannot read bearer token file: {exc.strerror}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def same_host_redirect(url: str, resp: httpx.Response) -> str | None:
    """Where a redirect answer points, when that is the same scheme, host and port as
    ``url``; else ``None``. LiteLLM answers ``/metrics`` with a 307 to ``/metrics/``; a
    redirect elsewhere is refused: the request's credentials would go with it, and an
    upstream could point the exporter at any address (SSRF)."""
    location = resp.headers.get("location")
    if resp.status_code not in _REDIRECT_STATUSES or not location:
        return None
    try:
        origin = httpx.URL(url)
        target = origin.join(location)
    except (httpx.InvalidURL, ValueError):
        return None
    same = (target.scheme, target.host, target.port) == (origin.scheme, origin.host, origin.port)
    return str(target) if same and not target.userinfo else None


async def get_bytes(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    redirects: int = 0,
) -> bytes:
    """GET ``url`` and return the body, refusing bodies over ``max_bytes``.

    The body is streamed so that an oversized response is cut off at the cap instead of
    being held in memory whole. A redirect is followed only to the same scheme, host and
    port (:func:`same_host_redirect`), at most :data:`MAX_REDIRECTS` times. Raises
    :class:`SourceError` for every failure.
    """
    responded = False
    try:
        async with client.stream(
            "GET", url, params=params, headers=headers, timeout=timeout
        ) as resp:
            responded = True
            if resp.status_code != 200:
                target = same_host_redirect(url, resp)
                if target is not None and redirects < MAX_REDIRECTS:
                    # A Location with a query keeps it; one without gets the request's again.
                    # The redirect's own body is not read.
                    return await get_bytes(
                        client,
                        target,
                        timeout=timeout,
                        max_bytes=max_bytes,
                        params=None if httpx.URL(target).query else params,
                        headers=headers,
                        redirects=redirects + 1,
                    )
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
