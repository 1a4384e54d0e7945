"""The one HTTP client to the upstreams, with each upstream's TLS and credentials.

The exporter has one ``httpx.AsyncClient`` (``web/app.py``); sources pass it full URLs.
:class:`UpstreamTransport` is its transport: a request whose URL starts with a configured
upstream URL (scheme, host, port and path prefix; the longest wins) goes through that
upstream's own connection pool, with its TLS settings (``tls.ca_file``, ``cert_file`` /
``key_file``, ``server_name``, ``insecure_skip_verify``; verification on by default) and its
credentials (``bearer_token_env``, ``basic_auth`` with a password file or variable; a
``bearer_token_file`` is sent by the source itself) added unless the request already carries
an ``Authorization`` header. Every other URL goes through the default pool: system CAs,
verification on.

Built from :class:`~aifinops.settings.Settings` by :func:`upstream_routes`, which raises
:class:`~aifinops.settings.ConfigError` naming the field when a CA, certificate or key cannot
be loaded, a password file cannot be read or a variable is unset — at start-up, and before a
reload applies (``web/lifecycle.py`` swaps the routes with :meth:`UpstreamTransport.replace`).
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

from aifinops.safefile import read_secret_file
from aifinops.settings import ConfigError, Settings, UpstreamHttpSettings, UpstreamTlsSettings
from aifinops.status import redact_url

log = structlog.get_logger("aifinops.sources.upstream")

Origin = tuple[str, str, int]  # scheme, host, port


def upstream_urls(settings: Settings) -> Iterator[tuple[str, str, UpstreamHttpSettings]]:
    """``(field, url, its settings)`` for every URL of every enabled HTTP upstream."""
    s = settings
    dcgm = s.sources.dcgm
    if dcgm.enabled:
        if dcgm.mode == "prometheus" and dcgm.prometheus_url:
            yield "sources.dcgm", dcgm.prometheus_url, dcgm
        if dcgm.mode == "scrape":
            for url in dcgm.scrape_urls:
                yield "sources.dcgm", url, dcgm
    hami = s.sources.hami
    if hami.enabled:
        if hami.mode == "prometheus" and hami.prometheus_url:
            yield "sources.hami", hami.prometheus_url, hami
        if hami.mode == "scrape":
            for url in hami.scrape_urls:
                yield "sources.hami", url, hami
    oc = s.sources.opencost
    if oc.enabled and oc.url:
        yield "sources.opencost", oc.url, oc
    if s.tokens.prices.url:
        yield "tokens.prices", s.tokens.prices.url, s.tokens.prices
    for section, sources in (
        ("tokens.sources", s.tokens.sources),
        ("latency.sources", s.latency.sources),
    ):
        for src in sources:
            if not src.enabled:
                continue
            name = f"{section}.{src.name}"
            if src.mode == "prometheus" and src.prometheus_url:
                yield name, src.prometheus_url, src
            if src.mode == "scrape":
                for target in src.scrape_targets:
                    yield name, target.url, src


def _origin(url: httpx.URL) -> Origin:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return url.scheme, url.host.lower(), port


@dataclass(slots=True)
class _Secret:
    """A secret from a file (re-read when it changes) or a fixed value (an environment
    variable, read when the routes are built)."""

    path: Path | None = None
    value: bytes = b""
    stamp: tuple[int, int] | None = None

    def current(self) -> bytes:
        if self.path is None:
            return self.value
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self.stamp:
                self.value = read_secret_file(self.path).strip()
                self.stamp = stamp
        except OSError:
            if self.stamp is not None or self.value:
                log.error("upstream_secret_unreadable", path=str(self.path))
            self.value, self.stamp = b"", None
        return self.value


@dataclass(slots=True)
class Route:
    """One upstream URL prefix: its pool (TLS) and credentials."""

    where: str
    origin: Origin
    path: str
    tls: UpstreamTlsSettings
    transport: httpx.AsyncHTTPTransport | None  # None: the default pool, no credentials
    bearer: _Secret | None = None
    basic_user: str | None = None
    basic_password: _Secret | None = None
    key: tuple[object, ...] = ()

    def matches(self, url: httpx.URL) -> bool:
        if _origin(url) != self.origin:
            return False
        prefix = self.path.rstrip("/")
        return not prefix or url.path == prefix or url.path.startswith(prefix + "/")

    def authorization(self) -> str | None:
        if self.bearer is not None:
            token = self.bearer.current()
            return f"Bearer {token.decode('utf-8', 'replace')}" if token else None
        if self.basic_user is not None and self.basic_password is not None:
            password = self.basic_password.current()
            raw = self.basic_user.encode() + b":" + password
            return "Basic " + base64.b64encode(raw).decode()
        return None


def client_ssl_context(tls: UpstreamTlsSettings, where: str) -> ssl.SSLContext:
    """A client context for ``tls``; raises :class:`ConfigError` naming ``where``."""
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"invalid configuration: {where}.tls: cannot load a CA, certificate or key: {exc}"
        ) from None
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _credentials(
    up: UpstreamHttpSettings, where: str, environ: Mapping[str, str]
) -> tuple[_Secret | None, str | None, _Secret | None]:
    def env(name: str, what: str) -> _Secret:
        value = environ.get(name, "").strip()
        if not value:
            raise ConfigError(
                f"invalid configuration: {what}: environment variable {name} is unset or empty"
            )
        return _Secret(value=value.encode())

    def from_file(path: Path, what: str) -> _Secret:
        secret = _Secret(path=path)
        if not secret.current():
            raise ConfigError(
                f"invalid configuration: {what}: {path} is missing, unreadable or empty"
            )
        return secret

    if up.bearer_token_env is not None:
        return env(up.bearer_token_env, f"{where}.bearer_token_env"), None, None
    if up.basic_auth is not None:
        b = up.basic_auth
        if b.password_file is not None:
            password = from_file(b.password_file, f"{where}.basic_auth.password_file")
        else:
            assert b.password_env is not None  # the settings validator requires one
            password = env(b.password_env, f"{where}.basic_auth.password_env")
        return None, b.username, password
    return None, None, None


def upstream_routes(settings: Settings, environ: Mapping[str, str] | None = None) -> list[Route]:
    """A route for every upstream URL: its own pool when it has TLS settings or credentials,
    else the default pool. Raises :class:`ConfigError` naming the field, also when two
    upstreams give the same URL different TLS settings or credentials."""
    env = os.environ if environ is None else environ
    routes: dict[tuple[Origin, str], Route] = {}
    for where, raw, up in upstream_urls(settings):
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"invalid configuration: {where}: {redact_url(raw)}: {exc}") from None
        key = (_origin(url), url.path.rstrip("/"))
        identity = (up.tls, up.bearer_token_env, up.basic_auth)
        if key in routes:
            if routes[key].key != identity:
                raise ConfigError(
                    f"invalid configuration: {where} and {routes[key].where} use the same URL "
                    f"{redact_url(raw)} with different tls or credentials"
                )
            continue
        # Every upstream URL has a route, those without settings of their own too: a longer
        # or shorter prefix of another upstream's URL never borrows its credentials.
        plain = up.tls.is_default and up.bearer_token_env is None and up.basic_auth is None
        bearer, user, password = _credentials(up, where, env)
        transport = None
        if not plain:
            transport = httpx.AsyncHTTPTransport(
                verify=client_ssl_context(up.tls, where),
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
            )
        routes[key] = Route(
            where, key[0], key[1], up.tls, transport, bearer, user, password, identity
        )
    return list(routes.values())


class UpstreamTransport(httpx.AsyncBaseTransport):
    """Routes each request to its upstream's pool (see the module docstring)."""

    def __init__(
        self, routes: list[Route], default: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._default = default or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)
        )
        self._routes = self._ordered(routes)

    @staticmethod
    def _ordered(routes: list[Route]) -> list[Route]:
        return sorted(routes, key=lambda r: len(r.path.rstrip("/")), reverse=True)

    def route_for(self, url: httpx.URL) -> Route | None:
        return next((r for r in self._routes if r.matches(url)), None)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        route = self.route_for(request.url)
        if route is None or route.transport is None:
            return await self._default.handle_async_request(request)
        if route.tls.server_name:
            request.extensions = {**request.extensions, "sni_hostname": route.tls.server_name}
        if "authorization" not in request.headers:
            header = route.authorization()
            if header:
                request.headers["Authorization"] = header
        return await route.transport.handle_async_request(request)

    async def replace(self, routes: list[Route]) -> None:
        """Use ``routes`` from now on (config reload) and close the old pools. Call it when
        no fetch is in flight (after the refresher swapped its sources)."""
        old, self._routes = self._routes, self._ordered(routes)
        for r in old:
            if r.transport is not None:
                await r.transport.aclose()

    async def aclose(self) -> None:
        for r in self._routes:
            if r.transport is not None:
                await r.transport.aclose()
        await self._default.aclose()


def build_client(routes: list[Route]) -> tuple[httpx.AsyncClient, UpstreamTransport]:
    """The exporter's one upstream client (redirects not followed: no SSRF through an
    upstream) and its transport, from :func:`upstream_routes`."""
    transport = UpstreamTransport(routes)
    return httpx.AsyncClient(transport=transport, follow_redirects=False), transport
