"""TLS and HTTP basic auth for the exporter's pages, configured the Prometheus way.

``server.web_config_file`` names a file in the shape of the Prometheus exporter-toolkit's
``--web.config.file`` (https://prometheus.io/docs/prometheus/latest/configuration/https/)::

    tls_server_config:
      cert_file: /etc/aifinops/tls/tls.crt
      key_file: /etc/aifinops/tls/tls.key
      # client_ca_file: /etc/aifinops/tls/ca.crt
      # client_auth_type: RequireAndVerifyClientCert
      # min_version: TLS12
    basic_auth_users:
      prometheus: $2b$12$...   # bcrypt hash, e.g. `htpasswd -nBC 12 "" | tr -d ':\\n'`

The subset supported: ``tls_server_config`` (``cert_file``, ``key_file``, ``client_ca_file``,
``client_auth_type`` NoClientCert / RequireAnyClientCert / VerifyClientCertIfGiven /
RequireAndVerifyClientCert, ``min_version`` TLS12 / TLS13) and ``basic_auth_users``; any other
key is an error (as in the toolkit). As in the toolkit, the file is re-read when it changes,
so users are added or removed without a restart; the certificate and key files are re-read on
the next TLS handshake after they change (a renewed cert-manager Secret).

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
import hashlib
import hmac
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt
import structlog
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aifinops.settings import ConfigError

log = structlog.get_logger("aifinops.web.security")

ClientAuthType = Literal[
    "NoClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
# Routes that stay open: Kubernetes probes, and the API, which has its own bearer tokens.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
OPEN_PREFIXES = ("/api/",)
CACHE_SIZE = 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    min_version: Literal["TLS12", "TLS13"] = "TLS12"


class WebConfig(_Strict):
    """The parsed web configuration file (see the module docstring)."""

    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: Mapping[str, str] = Field(default_factory=dict)

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


def parse_web_config(text: str, source: str) -> WebConfig:
    """Validate web configuration text; raise :class:`ConfigError` naming the field."""
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
    if config.tls_server_config is not None:
        ssl_context(config.tls_server_config)  # the files exist and match
    return config


def load_web_config(path: Path) -> WebConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, a NUL in the path
        raise ConfigError(f"cannot read web configuration file {path}: {exc}") from None
    return parse_web_config(text, str(path))


_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


def ssl_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """A server context for ``tls``; raises :class:`ConfigError` when a file is unreadable
    or the key does not match the certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(tls.client_ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a NUL in a path
        raise ConfigError(f"tls_server_config: cannot load certificate or key: {exc}") from None
    if tls.client_auth_type == "NoClientCert":
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.client_auth_type == "VerifyClientCertIfGiven":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        if tls.client_ca_file is None and tls.client_auth_type == "RequireAndVerifyClientCert":
            raise ConfigError("tls_server_config: RequireAndVerifyClientCert needs client_ca_file")
        # RequireAnyClientCert has no exact equivalent in OpenSSL's server modes: require and
        # verify against client_ca_file (or the system store when none is given).
        if tls.client_ca_file is None:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


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

        def pick(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
            current = self.config.tls_server_config or tls
            stamps = self._tls_file_stamps(current)
            if stamps != self._tls_stamps:
                self._tls_stamps = stamps
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
    app.middlewares.append(basic_auth_middleware)
    return security
