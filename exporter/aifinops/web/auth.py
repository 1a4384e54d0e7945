"""Bearer-token auth for the JSON API (``/api/*``), configured in ``api:``.

Scopes (see :class:`~aifinops.settings.ApiSettings`):

==================================  ================================================
route                               needs
==================================  ================================================
``GET /api/v1/openapi.json``        nothing (the document holds no data)
other ``GET /api/v1/*``             ``read`` when ``require_auth_for_reads``, else none
``POST /api/v1/roi/calculate``,     ``read`` when ``require_auth_for_reads``, else none:
``POST /api/v1/routing/optimize``   what-if calculators, they change no state
``POST /api/v1/usage``              ``write`` when write tokens are configured (or the
                                    push token of ``tokens.push.bearer_token_file``)
==================================  ================================================

A ``write`` token also has ``read``. A token that is sent is always checked, even on an open
route: a wrong token is a 401, never silently ignored. Answers: **401** ``unauthorized`` (no
token where one is needed, or an unknown one) with ``WWW-Authenticate: Bearer``; **403**
``forbidden`` (a valid token without the scope). Tokens are compared with
:func:`hmac.compare_digest` against every configured token (no early exit), and neither a token
nor its prefix is ever logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog
from aiohttp import web

from aifinops.safefile import read_secret_file
from aifinops.settings import ApiSettings, ConfigError

log = structlog.get_logger("aifinops.web.auth")

Scope = Literal["read", "write"]
API_SCOPE: web.RequestKey[str] = web.RequestKey("aifinops_api_scope", str)
"""Request key holding the scope the request's token was granted (``""`` without one)."""


@dataclass(slots=True)
class _FileToken:
    path: Path
    scope: Scope
    token: bytes = b""
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the last read

    def current(self) -> bytes:
        """The token, re-read when the file changed (a rotated Secret); empty when the file
        cannot be read (logged by path only)."""
        try:
            st = self.path.stat()
        except OSError:
            if self.stamp is not None:
                log.error("api_token_file_unreadable", path=str(self.path))
            self.token, self.stamp = b"", None
            return b""
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self.stamp:
            try:
                self.token = read_secret_file(self.path).decode("utf-8").strip().encode()
            except (OSError, UnicodeDecodeError):  # a FIFO or a device included (safefile)
                log.error("api_token_file_unreadable", path=str(self.path))
                self.token = b""
            self.stamp = stamp
        return self.token


@dataclass(slots=True)
class TokenStore:
    """The configured API tokens by scope."""

    require_auth_for_reads: bool = False
    files: list[_FileToken] = field(default_factory=list)
    env: list[tuple[bytes, Scope]] = field(default_factory=list)

    @classmethod
    def from_settings(
        cls, api: ApiSettings, environ: Mapping[str, str] | None = None
    ) -> TokenStore:
        """Read the tokens; a named environment variable that is unset or empty, or a token
        file that cannot be read or is empty, is a :class:`ConfigError` (fail closed at start
        rather than run with a hole)."""
        env = os.environ if environ is None else environ
        store = cls(require_auth_for_reads=api.require_auth_for_reads)
        for paths, scope in ((api.read_token_files, "read"), (api.write_token_files, "write")):
            for path in paths:
                token = _FileToken(path, scope)  # type: ignore[arg-type]
                if not token.current():
                    raise ConfigError(f"api: token file {path} is missing, unreadable or empty")
                store.files.append(token)
        for names, scope in ((api.read_token_env, "read"), (api.write_token_env, "write")):
            for name in names:
                value = env.get(name, "").strip()
                if not value:
                    raise ConfigError(f"api: environment variable {name} is unset or empty")
                store.env.append((value.encode(), scope))  # type: ignore[arg-type]
        return store

    @property
    def has_write_tokens(self) -> bool:
        return any(s == "write" for _, s in self.env) or any(f.scope == "write" for f in self.files)

    def scope_of(self, presented: str) -> Scope | None:
        """The widest scope of the configured tokens equal to ``presented``; ``None`` when none
        is. Every configured token is compared (constant time per comparison, no early exit)."""
        # surrogateescape: a header's undecodable bytes never raise here (they match nothing).
        given = presented.encode("utf-8", "surrogateescape")
        matched: set[Scope] = set()
        candidates = [(tok, scope) for tok, scope in self.env]
        candidates += [(f.current(), f.scope) for f in self.files]
        for token, scope in candidates:
            if token and hmac.compare_digest(given, token):
                matched.add(scope)
        if "write" in matched:
            return "write"
        if "read" in matched:
            return "read"
        return None


def bearer_token(header: str | None) -> tuple[bool, str | None]:
    """``(present, token)`` from an ``Authorization`` header: ``(False, None)`` without one,
    ``(True, None)`` when it is not a well-formed ``Bearer <token>``."""
    if header is None:
        return False, None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or not _b64token(token):
        return True, None
    return True, token


def _b64token(token: str) -> bool:
    """RFC 6750's token68 characters: printable ASCII without spaces (a header's invalid
    UTF-8 arrives as surrogates and is refused here, a 401, never a 500)."""
    return token.isascii() and token.isprintable()
