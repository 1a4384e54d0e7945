"""The LLM price list: the bundled file, a configured file, or a URL; last good copy kept.

* ``tokens.prices.file`` (or the bundled ``data/llm_prices.json`` when neither file nor URL
  is set) is stat'ed every refresh and re-read when its mtime or size changes;
* ``tokens.prices.url`` is fetched every ``refresh_interval_seconds`` (a failed fetch is
  retried after ``min(interval, 300 s)``).

A read, fetch or parse failure raises :class:`SourceError`; the refresh loop then keeps the
last good catalog (this source is registered with no staleness limit: an old price list is
better than none). A file whose bad content has not changed is not parsed again: the same
error is raised until the file changes.

:func:`load_catalog` is pure: bytes of LiteLLM's ``model_prices_and_context_window.json``
format plus configured overrides → :class:`LlmPriceCatalog`. The catalog version is the
declared ``version`` or ``sha256:<12 hex>`` of the bytes (see
:func:`~aifinops.model.llm_prices.content_version`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path

import httpx

from aifinops.model.llm_prices import (
    LlmPrice,
    LlmPriceCatalog,
    LlmPriceError,
    build_catalog,
    content_version,
    override_price,
    parse_litellm_prices,
)
from aifinops.settings import LlmPricesSettings, PriceOverrideSettings
from aifinops.sources.base import Slot, SourceError, get_bytes, read_bearer_token
from aifinops.text import loads_json

BUNDLED = "llm_prices.json"
BUNDLED_VERSION = "litellm-1.109.1-subset"
RETRY_CAP_SECONDS = 300.0

Clock = Callable[[], float]


def overrides_from_settings(overrides: Mapping[str, PriceOverrideSettings]) -> list[LlmPrice]:
    """Configured overrides (USD per 1M tokens) as per-token prices."""
    return [
        override_price(
            key,
            input_usd_per_million_tokens=o.input_usd_per_million_tokens,
            output_usd_per_million_tokens=o.output_usd_per_million_tokens,
            cached_input_usd_per_million_tokens=o.cached_input_usd_per_million_tokens,
            provider=o.provider,
        )
        for key, o in overrides.items()
    ]


def load_catalog(
    content: bytes,
    origin: str,
    version: str | None = None,
    overrides: Iterable[LlmPrice] = (),
) -> LlmPriceCatalog:
    """Parse price-list bytes into a catalog.

    Raises :class:`SourceError` ``parse`` when the bytes are not JSON, ``invalid`` when the
    JSON is not a LiteLLM price map with at least one priced entry; ``origin`` names the file
    or URL in the message.
    """
    try:
        data = loads_json(content)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise SourceError("parse", f"price list {origin} is not JSON: {exc}") from None
    try:
        entries = parse_litellm_prices(data)
    except LlmPriceError as exc:
        raise SourceError("invalid", f"price list {origin}: {exc}") from None
    return build_catalog(entries, version or content_version(content), overrides)


def bundled_bytes() -> bytes:
    """The price list shipped with the package (see ``data/README.md`` for provenance)."""
    return resources.files("aifinops.data").joinpath(BUNDLED).read_bytes()


class LlmPriceSource:
    """Loads the price list; see the module docstring for when it reads or fetches."""

    name = "llm_prices"
    slot = Slot.PRICES
    local = True  # a price list alone does not make the exporter ready (see refresh.py)
    min_interval_seconds = 0.0
    first_read_baseline = False
    targets = None

    def __init__(self, settings: LlmPricesSettings, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._overrides = overrides_from_settings(settings.overrides)
        self._catalog: LlmPriceCatalog | None = None
        self._signature: tuple[int, int] | None = None  # (mtime_ns, size) last read
        self._failed: tuple[tuple[int, int], SourceError] | None = None
        self._next_fetch = 0.0
        self._last_error: SourceError | None = None

    async def fetch(self, client: httpx.AsyncClient) -> LlmPriceCatalog:
        s = self._settings
        if s.url:
            return await self._fetch_url(client, s.url)
        if s.file is not None:
            return await asyncio.to_thread(self._read_file, s.file)
        if self._catalog is None:
            self._catalog = load_catalog(
                bundled_bytes(), f"(bundled {BUNDLED})", BUNDLED_VERSION, self._overrides
            )
        return self._catalog

    def _read_file(self, path: Path) -> LlmPriceCatalog:
        try:
            st = path.stat()
        except OSError as exc:
            raise SourceError("invalid", f"cannot stat price list {path}: {exc.strerror}") from None
        signature = (st.st_mtime_ns, st.st_size)
        if self._catalog is not None and signature == self._signature:
            return self._catalog
        if self._failed is not None and self._failed[0] == signature:
            raise self._failed[1]
        try:
            content = path.read_bytes()
            catalog = load_catalog(content, str(path), self._settings.version, self._overrides)
        except OSError as exc:
            raise SourceError("invalid", f"cannot read price list {path}: {exc.strerror}") from None
        except SourceError as exc:
            self._failed = (signature, exc)
            raise
        self._catalog, self._signature, self._failed = catalog, signature, None
        return catalog

    async def _fetch_url(self, client: httpx.AsyncClient, url: str) -> LlmPriceCatalog:
        s = self._settings
        now = self._clock()
        if now < self._next_fetch:
            if self._last_error is not None:
                raise self._last_error
            if self._catalog is not None:
                return self._catalog
        try:
            body = await get_bytes(
                client,
                url,
                timeout=s.timeout_seconds,
                max_bytes=s.max_response_bytes,
                headers=read_bearer_token(s.bearer_token_file),
            )
            catalog = load_catalog(body, url, s.version, self._overrides)
        except SourceError as exc:
            self._last_error = exc
            self._next_fetch = now + min(s.refresh_interval_seconds, RETRY_CAP_SECONDS)
            raise
        self._catalog, self._last_error = catalog, None
        self._next_fetch = now + s.refresh_interval_seconds
        return catalog
