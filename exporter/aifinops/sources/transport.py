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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from aifinops.sources.base import CpuRunner, SourceError, get_bytes, read_bearer_token
from aifinops.sources.promapi import parse_vector, query_body

T = TypeVar("T")
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


__all__ = ["ReadSettings", "Transport", "Vector"]
