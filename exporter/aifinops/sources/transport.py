"""One transport for the sources that read "a PromQL instant query or scrape pages" (``dcgm``,
``tokens:*``, ``latency:*``).

Each of them reads its upstream one of two ways (``mode``): an instant query against the
Prometheus HTTP API (``promapi.instant_query``), or the ``/metrics`` pages of its scrape
targets. What they share lives here: the bearer token read on every fetch, the
``prometheus_url`` check, the request with the source's timeout and body cap, and one mapping
of what can go wrong to a :class:`SourceError` — HTTP and transport failures
(``base.get_bytes``), a URL httpx refuses (``invalid``: configured, so reported, never
raised as a crash), a page that does not parse (``parse``). What to ask, how to parse a page
and what to do when one page of several fails stay with each source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from aifinops.sources.base import (
    CpuRunner,
    SourceError,
    get_bytes,
    get_chunks,
    read_bearer_token,
)
from aifinops.sources.promapi import parse_vector, query_body

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Vector = list[tuple[dict[str, str], float]]


class ReadSettings(Protocol):
    """The settings every such source has (``settings.SourceCommon`` and ``prometheus_url``)."""

    @property
    def prometheus_url(self) -> str | None: ...

    @property
    def timeout_seconds(self) -> float: ...

    @property
    def max_response_bytes(self) -> int: ...

    @property
    def bearer_token_file(self) -> Path | None: ...


class PageFeed(Protocol[T_co]):
    """A page's parse fed as the page arrives (``promtext.PageRead``'s form)."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> T_co: ...


STREAM_PIECE_BYTES = 1 << 20
"""What :meth:`Transport.stream_page` gathers before handing it to the parse: a CPU worker
call per MiB, not per network read, and never more of the page held than about this."""


class Transport:
    """How the source ``name`` reads its upstream with ``settings``; pages and answers are
    parsed by ``run`` (the CPU worker the source was given)."""

    def __init__(self, name: str, settings: ReadSettings, run: CpuRunner) -> None:
        self.name = name
        self._settings = settings
        self.run = run

    def headers(self) -> dict[str, str]:
        """The request headers of one fetch: read every time, since Kubernetes rotates
        projected service-account tokens."""
        return read_bearer_token(self._settings.bearer_token_file)

    async def query(
        self,
        client: httpx.AsyncClient,
        promql: str,
        headers: Mapping[str, str],
        *,
        skipped: list[int] | None = None,
    ) -> Vector:
        """The instant vector of ``promql`` (``promapi.parse_vector``; ``skipped`` as there),
        parsed on the CPU worker."""
        body = await self.query_body(client, promql, headers)
        return await self.run(parse_vector, body, skipped)

    async def query_body(
        self, client: httpx.AsyncClient, promql: str, headers: Mapping[str, str]
    ) -> bytes:
        """The body of the instant query ``promql``, unparsed (for a source that reads it
        with a ``promapi.VectorReader``)."""
        s = self._settings
        if not s.prometheus_url:
            raise SourceError("invalid", f"{self.name}: mode 'prometheus' has no prometheus_url")
        return await query_body(
            client,
            s.prometheus_url,
            promql,
            timeout=s.timeout_seconds,
            max_bytes=s.max_response_bytes,
            headers=headers,
        )

    async def page(self, client: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> bytes:
        """The body of one scrape page."""
        s = self._settings
        try:
            return await get_bytes(
                client,
                url,
                timeout=s.timeout_seconds,
                max_bytes=s.max_response_bytes,
                headers=headers,
            )
        except httpx.InvalidURL as exc:
            raise SourceError("invalid", f"{exc}") from None

    async def read_page(
        self,
        client: httpx.AsyncClient,
        url: str,
        headers: Mapping[str, str],
        parse: Callable[..., T],
        *args: Any,
        where: str,
    ) -> T:
        """One scrape page, parsed as soon as it arrives (so the body is not held while other
        pages are fetched) by ``parse(body, *args)`` on the CPU worker; a ``ValueError``
        (``UnicodeDecodeError`` included) is reason ``parse``, named by ``where``."""
        body = await self.page(client, url, headers)
        try:
            return await self.run(parse, body, *args)
        except ValueError as exc:
            raise SourceError("parse", f"{where}: {exc}") from None

    async def stream_page(
        self,
        client: httpx.AsyncClient,
        url: str,
        headers: Mapping[str, str],
        parse: PageFeed[T],
        *,
        where: str,
    ) -> T:
        """:meth:`read_page` for a parse fed as the page arrives: pieces of about
        :data:`STREAM_PIECE_BYTES` go to ``parse.feed`` on the CPU worker while the rest is
        still coming, so the body is never held whole (a LiteLLM page at fleet scale set the
        refresh's peak: bench/README.md). The errors are :meth:`read_page`'s, with the same
        precedence: a page that does not parse is still read to its end, so a body that also
        breaks off or passes the cap fails as it did when it was read before its parse."""
        s = self._settings
        failed: ValueError | None = None
        pending: list[bytes] = []
        size = 0

        async def feed() -> None:
            nonlocal failed, size
            piece = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            size = 0
            try:
                await self.run(parse.feed, piece)
            except ValueError as exc:
                # Kept without its traceback: its frames (this one's cells) would make a
                # cycle holding the parse's partial read until the collector ran.
                failed = exc.with_traceback(None)

        try:
            async with contextlib.aclosing(
                get_chunks(
                    client,
                    url,
                    timeout=s.timeout_seconds,
                    max_bytes=s.max_response_bytes,
                    headers=headers,
                )
            ) as chunks:
                async for chunk in chunks:
                    if failed is not None:
                        continue  # read to the end, unparsed: its own failure comes first
                    pending.append(chunk)
                    size += len(chunk)
                    if size >= STREAM_PIECE_BYTES:
                        await feed()
        except httpx.InvalidURL as exc:
            raise SourceError("invalid", f"{exc}") from None
        except BaseException:
            pending.clear()  # a traceback holds this frame: not a MiB of the page with it
            raise
        if failed is None and pending:
            await feed()
        try:
            if failed is not None:
                raise failed
            return await self.run(parse.finish)
        except ValueError as exc:
            raise SourceError("parse", f"{where}: {exc}") from None

    async def read_pages(
        self,
        client: httpx.AsyncClient,
        urls: Sequence[str],
        headers: Mapping[str, str],
        parse: Callable[..., list[T]],
        *args: Any,
    ) -> list[T]:
        """Every scrape page at once (:meth:`read_page` each, named by its URL), their parsed
        items concatenated in URL order. The first failure cancels the other pages and is the
        one raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.read_page(client, url, headers, parse, *args, where=url))
                    for url in urls
                ]
        except* SourceError as failed:
            raise failed.exceptions[0] from None
        return [item for task in tasks for item in task.result()]


__all__ = ["PageFeed", "ReadSettings", "Transport", "Vector"]
