"""TLS and HTTP basic auth for the exporter's pages, configured the Prometheus way.

``server.web_config_file`` (or ``--web.config.file``) names a file in the shape of the
Prometheus exporter-toolkit's web configuration
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)::

    tls_server_config:
      cert_file: /etc/aifinops/tls/tls.crt      # or cert: <PEM text>
      key_file: /etc/aifinops/tls/tls.key       # or key: <PEM text>
      # client_ca_file: /etc/aifinops/tls/ca.crt   (or client_ca: <PEM text>)
      # client_auth_type: RequireAndVerifyClientCert
      # client_allowed_sans: [prometheus.monitoring.svc]
      # min_version: TLS12
      # max_version: TLS13
      # cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   (TLS 1.2 and below)
      # prefer_server_cipher_suites: true
    http_server_config:
      headers: {X-Content-Type-Options: nosniff, X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2b$12$...   # bcrypt hash, e.g. `htpasswd -nBC 12 "" | tr -d ':\\n'`
    rate_limit: {interval: 100ms, burst: 20}

Every key the toolkit accepts is accepted; any other key is an error (as in the toolkit).
Relative file paths are read from the web configuration file's folder (as in the toolkit).
Where Python's ``ssl`` module or aiohttp cannot do what the toolkit does, the key is accepted
and one warning is logged when the file is loaded (:meth:`WebConfig.unsupported`):

* ``curve_preferences``: Python's ``ssl`` (3.11) has no call to set the key-exchange group
  list (``set_ecdh_curve`` takes one curve); OpenSSL's default groups are used.
* ``http_server_config.http2: true``: aiohttp serves HTTP/1.1 only (``false`` is what it does).
* ``client_auth_type: RequestClientCert``: Python's ``ssl`` cannot ask for a certificate
  without verifying it; it behaves as ``VerifyClientCertIfGiven`` (and needs a client CA).

``client_allowed_sans`` is checked on each request (Python's ``ssl`` has no verify callback at
the handshake): a verified client certificate without an allowed SAN (DNS, IP, e-mail, URI) is
answered 403 and the connection closed. ``rate_limit`` is one token bucket for the whole
server, as in the toolkit (429 when empty), except the probes ``/healthz`` and ``/readyz``,
which a kubelet must always reach. ``http_server_config.headers`` takes the toolkit's five
headers (Strict-Transport-Security, X-Content-Type-Options: nosniff, X-Frame-Options:
deny|sameorigin, X-XSS-Protection, Content-Security-Policy) and sets them on every response.

As in the toolkit, the file is re-read when it changes, so users are added or removed without
a restart; the certificate and key files are re-read on the next TLS handshake after they
change (a renewed cert-manager Secret).

Basic auth covers every route except ``/healthz`` and ``/readyz`` (probes; ``/readyz`` shows
its per-source detail only to a client that passes, :func:`may_see_detail`) and ``/api/``
(its own bearer tokens, ``web/auth.py``). A check runs bcrypt in a worker thread, also for an
unknown user (against a dummy hash of the configured users' highest cost), so the answer time
does not tell whether a user exists;
results are cached by a digest of (user, password, hash) as the toolkit does, so a scrape
every few seconds costs one bcrypt per password change, not one per scrape. A failure is a
401 with ``WWW-Authenticate: Basic``; passwords and hashes are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import structlog
import yaml
from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from aifinops.safefile import read_bounded
from aifinops.settings import ConfigError
from aifinops.web.ratelimit import RateLimiter, retry_after

log = structlog.get_logger("aifinops.web.security")

ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",  # the toolkit's older name of RequireAnyClientCert
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
TlsVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
# Routes that stay open: Kubernetes probes, and the API, which has its own bearer tokens.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
OPEN_PREFIXES = ("/api/",)
CACHE_SIZE = 1024

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's cipher suite names (the toolkit accepts those of tls.CipherSuites(); the RSA key
# exchange and the legacy CHACHA20 names of older Go versions are accepted too), with
# OpenSSL's name. TLS 1.3 suites are not configurable in Go either: nothing to set (None).
GO_CIPHER_SUITES: Mapping[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
GO_CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519")
# http_server_config.headers: the toolkit's list, with the values it allows (None: any).
EXTRA_HEADERS: Mapping[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_GO_UNITS["h"] = 3600.0


def parse_go_duration(value: object) -> float:
    """A Go duration (``100ms``, ``1m30s``, ``0``) in seconds; raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a duration such as '100ms' or '1s', got {value!r}")
    text = str(value).strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as '100ms' or '1s', got {value!r}")
    return total


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    """``tls_server_config``: a certificate and key from files or inline PEM (one of each)."""

    cert: str | None = None
    key: SecretStr | None = None  # never printed
    client_ca: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    client_allowed_sans: tuple[str, ...] | None = None
    min_version: TlsVersionName = "TLS12"
    max_version: TlsVersionName = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    @field_validator("cipher_suites")
    @classmethod
    def _go_ciphers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in v if c not in GO_CIPHER_SUITES]
        if unknown:
            raise ValueError(f"unknown cipher {unknown[0]!r} (Go's tls.CipherSuites() names)")
        return v

    @field_validator("curve_preferences")
    @classmethod
    def _go_curves(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in v if c not in GO_CURVES]
        if unknown:
            raise ValueError(f"unknown curve {unknown[0]!r} (one of {', '.join(GO_CURVES)})")
        return v

    @model_validator(mode="after")
    def _one_of_each(self) -> TlsServerConfig:
        for inline, path in (("cert", "cert_file"), ("key", "key_file")):
            given = [n for n in (inline, path) if getattr(self, n) is not None]
            if not given:
                raise ValueError(f"missing one of {inline} or {path}")
            if len(given) == 2:
                raise ValueError(f"set {inline} or {path}, not both")
        if self.client_ca is not None and self.client_ca_file is not None:
            raise ValueError("set client_ca or client_ca_file, not both")
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
            raise ValueError(f"min_version {self.min_version} is above max_version")
        has_ca = self.client_ca is not None or self.client_ca_file is not None
        if has_ca and self.client_auth_type == "NoClientCert":
            # The toolkit's own check: a CA without a policy would silently verify nothing.
            raise ValueError("client CA's have been configured without a client_auth_type")
        if self.client_allowed_sans is not None and self.client_auth_type in (
            "NoClientCert",
            "RequestClientCert",
        ):
            raise ValueError(
                "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert "
                "(or another mode that verifies client certificates)"
            )
        return self

    def relative_to(self, folder: Path) -> TlsServerConfig:
        """File paths joined with ``folder`` when relative (the toolkit's SetDirectory)."""
        changes = {
            name: folder / p
            for name in ("cert_file", "key_file", "client_ca_file")
            if (p := getattr(self, name)) is not None and not p.is_absolute()
        }
        return self.model_copy(update=changes) if changes else self


class HttpServerConfig(_Strict):
    http2: bool = True
    headers: Mapping[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _toolkit_headers(cls, v: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in v.items():
            if name not in EXTRA_HEADERS:
                raise ValueError(f"HTTP header {name!r} can not be configured")
            allowed = EXTRA_HEADERS[name]
            if allowed is not None and value not in allowed:
                raise ValueError(f"invalid value for {name}: expected one of {list(allowed)}")
        return v


class RateLimitConfig(_Strict):
    """One token bucket for the server: a request every ``interval`` seconds, ``burst`` at
    once; ``interval: 0`` turns it off."""

    interval: float = 0.0
    burst: int = Field(0, ge=0)

    @field_validator("interval", mode="before")
    @classmethod
    def _go_duration(cls, v: Any) -> float:
        return parse_go_duration(v)

    @model_validator(mode="after")
    def _burst_when_on(self) -> RateLimitConfig:
        if self.interval > 0 and self.burst < 1:
            raise ValueError("burst must be at least 1 when interval is set (else nothing passes)")
        return self


class WebConfig(_Strict):
    """The parsed web configuration file (see the module docstring)."""

    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = Field(default_factory=HttpServerConfig)
    basic_auth_users: Mapping[str, str] = Field(default_factory=dict)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, v: Mapping[str, str]) -> Mapping[str, str]:
        for user, hashed in v.items():
            if not user or ":" in user:
                raise ValueError(f"user name {user!r} must be non-empty and hold no ':'")
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                # Never echo the value: it may be a password pasted by mistake.
                raise ValueError(f"the password of {user!r} must be a bcrypt hash ($2b$...)")
            try:
                bcrypt.checkpw(b"", hashed.encode())
            except ValueError:
                raise ValueError(f"the bcrypt hash of {user!r} is malformed") from None
        return v

    def unsupported(self) -> list[tuple[str, str]]:
        """``(key, why)`` for each key set here that Python's ssl or aiohttp cannot apply."""
        out: list[tuple[str, str]] = []
        tls = self.tls_server_config
        if tls is not None and tls.curve_preferences:
            out.append(
                (
                    "tls_server_config.curve_preferences",
                    "Python's ssl module has no call to set the key-exchange group list; "
                    "OpenSSL's default groups are used",
                )
            )
        if tls is not None and tls.client_auth_type == "RequestClientCert":
            out.append(
                (
                    "tls_server_config.client_auth_type",
                    "Python's ssl cannot request a client certificate without verifying it; "
                    "RequestClientCert acts as VerifyClientCertIfGiven",
                )
            )
        http = self.http_server_config
        if "http2" in http.model_fields_set and http.http2:
            out.append(
                ("http_server_config.http2", "aiohttp serves HTTP/1.1 only; http2 is ignored")
            )
        return out


def parse_web_config(text: str, source: str, folder: Path | None = None) -> WebConfig:
    """Validate web configuration text; raise :class:`ConfigError` naming the field.
    Relative certificate paths are read from ``folder`` (the file's own folder)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"web configuration {source} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid web configuration in {source}: top level must be a mapping")
    try:
        config = WebConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid web configuration in {source}:"]
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {path}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    tls = config.tls_server_config
    if tls is not None:
        if folder is not None:
            tls = tls.relative_to(folder)
            config = config.model_copy(update={"tls_server_config": tls})
        ssl_context(tls)  # the files exist and match
    return config


MAX_WEB_CONFIG_BYTES = 4 * 1024 * 1024
"""A web configuration (inline PEM included) is kilobytes; a FIFO or /dev/zero is refused."""


def load_web_config(path: Path) -> WebConfig:
    try:
        text = read_bounded(path, MAX_WEB_CONFIG_BYTES).decode("utf-8")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, a NUL in the path
        raise ConfigError(f"cannot read web configuration file {path}: {exc}") from None
    return parse_web_config(text, str(path), path.parent)


@contextlib.contextmanager
def _pem_path(pem: str) -> Iterator[str]:
    """A path holding ``pem`` for as long as the block runs (``load_cert_chain`` takes paths
    only): an anonymous memory file on Linux, else a private temporary file."""
    data = pem.encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("aifinops-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as folder:  # mode 0700
        path = Path(folder) / "pem"
        path.write_bytes(data)
        yield str(path)


def _load_chain(ctx: ssl.SSLContext, tls: TlsServerConfig) -> None:
    with contextlib.ExitStack() as stack:
        cert = (
            str(tls.cert_file)
            if tls.cert_file is not None
            else stack.enter_context(_pem_path(tls.cert or ""))
        )
        key = (
            str(tls.key_file)
            if tls.key_file is not None
            else stack.enter_context(_pem_path(tls.key.get_secret_value() if tls.key else ""))
        )
        ctx.load_cert_chain(cert, key)


def ssl_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """A server context for ``tls``; raises :class:`ConfigError` when a file is unreadable,
    a PEM text is invalid or the key does not match the certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        with warnings.catch_warnings():
            # TLS10/TLS11 are deprecated in Python but the toolkit accepts them; asked for.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
            ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
        openssl_names = [n for c in tls.cipher_suites if (n := GO_CIPHER_SUITES[c]) is not None]
        if openssl_names:
            # Only TLS 1.2 and below, as in Go: TLS 1.3 suites are OpenSSL's defaults.
            ctx.set_ciphers(":".join(openssl_names))
        if tls.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        _load_chain(ctx, tls)
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(tls.client_ca_file)
        elif tls.client_ca is not None:
            ctx.load_verify_locations(cadata=tls.client_ca)
    except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a NUL in a path
        raise ConfigError(f"tls_server_config: cannot load certificate or key: {exc}") from None
    has_ca = tls.client_ca_file is not None or tls.client_ca is not None
    if tls.client_auth_type == "NoClientCert":
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.client_auth_type in ("VerifyClientCertIfGiven", "RequestClientCert"):
        if not has_ca:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        if not has_ca and tls.client_auth_type == "RequireAndVerifyClientCert":
            raise ConfigError("tls_server_config: RequireAndVerifyClientCert needs client_ca_file")
        # RequireAnyClientCert has no exact equivalent in OpenSSL's server modes: require and
        # verify against the client CA (or the system store when none is given).
        if not has_ca:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def san_allowed(peercert: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether a verified client certificate (``getpeercert()``) has a Subject Alternative
    Name in ``allowed`` (exact match, as the toolkit; IP addresses compared as addresses)."""
    if not peercert:
        return False
    allowed_ips = set()
    for a in allowed:
        with contextlib.suppress(ValueError):
            allowed_ips.add(ipaddress.ip_address(a))
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "IP Address":
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(value.strip()) in allowed_ips:
                    return True
        elif value in allowed:
            return True
    return False


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass(slots=True)
class WebSecurity:
    """The web configuration in force, re-read when its file changes (an unreadable or
    invalid new version is logged once and the previous one kept)."""

    path: Path | None
    config: WebConfig = field(default_factory=WebConfig)
    _stamp: tuple[int, int] | None = None
    _cache: OrderedDict[bytes, bool] = field(default_factory=OrderedDict)
    _tls_stamps: tuple[tuple[int, int] | None, ...] = ()
    _tls_context: ssl.SSLContext | None = None
    _tls_source: TlsServerConfig | None = None
    _limiter: RateLimiter | None = None
    _limiter_config: RateLimitConfig | None = None

    @classmethod
    def from_file(cls, path: Path | None) -> WebSecurity:
        """Load ``path`` (raises :class:`ConfigError`); no file: no TLS, no auth."""
        sec = cls(path)
        if path is not None:
            sec.config = load_web_config(path)
            sec._stamp = _stamp(path)
            users = sec.config.basic_auth_users
            if users:  # made now, so the first unknown user does not pay for it (timing)
                _dummy_hash(max(_cost(h) for h in users.values()))
            _warn_unsupported(sec.config, path)
        return sec

    def current(self) -> WebConfig:
        if self.path is None:
            return self.config
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.config = load_web_config(self.path)
                self._cache.clear()
                log.info("web_config_reloaded", path=str(self.path))
                _warn_unsupported(self.config, self.path)
            except ConfigError as exc:
                log.error("web_config_reload_failed", path=str(self.path), error=str(exc))
        return self.config

    # --- TLS ----------------------------------------------------------------------------
    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The context to serve with, or ``None`` without ``tls_server_config``. Each
        handshake checks the certificate files and switches to a new context when they
        changed (the handshake of a bad new pair keeps the old one)."""
        tls = self.config.tls_server_config
        if tls is None:
            return None
        outer = ssl_context(tls)
        self._tls_context = outer
        self._tls_stamps = self._tls_file_stamps(tls)
        self._tls_source = tls

        def pick(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
            current = self.config.tls_server_config or tls
            stamps = self._tls_file_stamps(current)
            # A changed file, or a reloaded web configuration (inline PEM, versions, ciphers).
            if stamps != self._tls_stamps or current is not self._tls_source:
                self._tls_stamps = stamps
                self._tls_source = current
                try:
                    self._tls_context = ssl_context(current)
                    log.info("tls_certificate_reloaded", cert_file=str(current.cert_file))
                except ConfigError as exc:
                    log.error("tls_certificate_reload_failed", error=str(exc))
            if self._tls_context is not None and self._tls_context is not outer:
                sock.context = self._tls_context

        outer.sni_callback = pick
        return outer

    @staticmethod
    def _tls_file_stamps(tls: TlsServerConfig) -> tuple[tuple[int, int] | None, ...]:
        files = [tls.cert_file, tls.key_file, tls.client_ca_file]
        return tuple(_stamp(f) if f is not None else None for f in files)

    # --- basic auth ---------------------------------------------------------------------
    async def allowed(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header passes basic auth (always, with no users)."""
        users = self.current().basic_auth_users
        if not users:
            return True
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        known = hashed is not None
        if hashed is not None:
            target = hashed.encode()
        else:
            # As costly as the dearest real hash: the time must not tell that a user is unknown.
            target = await asyncio.to_thread(_dummy_hash, max(_cost(h) for h in users.values()))
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), target))).digest()
        cached = self._cache.get(key)
        if cached is None:
            cached = await asyncio.to_thread(_checkpw, password.encode(), target)
            self._cache[key] = cached
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return cached and known


def _cost(hashed: str) -> int:
    """The work factor of a ``$2b$NN$...`` hash (validated by :class:`WebConfig`)."""
    digits = hashed[4:6]
    return int(digits) if digits.isdigit() else 10


_DUMMIES: dict[int, bytes] = {}


def _dummy_hash(cost: int) -> bytes:
    """A hash of a random password at ``cost``, made once per cost (one bcrypt)."""
    dummy = _DUMMIES.get(cost)
    if dummy is None:
        secret = secrets.token_hex(16).encode()
        dummy = _DUMMIES[cost] = bcrypt.hashpw(secret, bcrypt.gensalt(rounds=min(max(cost, 4), 31)))
    return dummy


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    # surrogateescape: a header's invalid UTF-8 arrives as surrogates; a 401, never a 500.
    if not hmac.compare_digest(scheme.lower().encode("utf-8", "surrogateescape"), b"basic"):
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, a non-ASCII str
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


WEB_SECURITY = web.AppKey("web_security", WebSecurity)


async def may_see_detail(request: web.Request) -> bool:
    """Whether ``request`` passes the basic auth that guards ``/metrics`` (always, with no
    users): ``/readyz`` stays open for probes but shows its per-source detail only then."""
    security = request.app.get(WEB_SECURITY)
    return security is None or await security.allowed(request.headers.get("Authorization"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def basic_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return await handler(request)
    if not await request.app[WEB_SECURITY].allowed(request.headers.get("Authorization")):
        return web.Response(
            status=401,
            text="Unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="aifinops-exporter", charset="UTF-8"'},
        )
    return await handler(request)


def install_web_security(app: web.Application, path: Path | None) -> WebSecurity:
    """Load the web configuration (raises :class:`ConfigError`) and guard ``app`` with basic
    auth; the caller serves with :meth:`WebSecurity.server_ssl_context`."""
    security = WebSecurity.from_file(path)
    app[WEB_SECURITY] = security
    # Outermost first, as the toolkit orders them: rate limit, then headers, then auth.
    app.middlewares.append(toolkit_middleware)
    app.middlewares.append(basic_auth_middleware)
    return security


# --- the toolkit's rate limit, response headers and client SAN check ---------------------


def _warn_unsupported(config: WebConfig, path: Path) -> None:
    for key, why in config.unsupported():
        log.warning("web_config_key_not_applied", path=str(path), key=key, reason=why)


def _rate_limited(security: WebSecurity, config: WebConfig) -> float:
    """Seconds to wait when the server's bucket is empty, else 0.0."""
    limit = config.rate_limit
    if limit.interval <= 0:
        return 0.0
    if security._limiter is None or security._limiter_config != limit:
        security._limiter = RateLimiter(1.0 / limit.interval, limit.burst)
        security._limiter_config = limit
    return security._limiter.take("server")


@web.middleware
async def toolkit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``rate_limit`` (not for the probes), ``client_allowed_sans`` and
    ``http_server_config.headers`` (on every answer, errors included)."""
    security = request.app[WEB_SECURITY]
    config = security.current()
    headers = config.http_server_config.headers
    try:
        if request.path not in OPEN_PATHS:
            wait = _rate_limited(security, config)
            if wait > 0:
                raise web.HTTPTooManyRequests(headers={"Retry-After": retry_after(wait)})
        tls = config.tls_server_config
        if tls is not None and tls.client_allowed_sans is not None:
            peercert = request.transport.get_extra_info("peercert") if request.transport else None
            if not san_allowed(peercert, tls.client_allowed_sans):
                # Go ends the handshake; without a verify callback, refuse and hang up.
                raise web.HTTPForbidden(
                    text="client certificate has no allowed SAN\n",
                    headers={"Connection": "close"},
                )
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(headers)
        raise
    response.headers.update(headers)
    return response
