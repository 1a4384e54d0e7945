"""The JSON API's front door: its paths, the bearer-token keys, the auth and error
middleware, and the types of the answers a refresh prepares ahead. Apart from the endpoints
(:mod:`aifinops.web.api`, which re-exports all of it) because the front process
(``web/front.py``) needs exactly this and must not import the model and numpy that the
endpoints bring (~20 MiB of its memory)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from aifinops.web.auth import API_SCOPE, TokenStore, bearer_token
from aifinops.web.errors import ErrorCode, ErrorResponse

if TYPE_CHECKING:
    from aifinops.model.finance import FinanceReport

log = structlog.get_logger("aifinops.web.api")

PREFIX = "/api/v1"
USAGE_PATH = f"{PREFIX}/usage"
OPENAPI_PATH = f"{PREFIX}/openapi.json"
API_TOKENS = web.AppKey("api_tokens", TokenStore)
PUSH_TOKEN_CONFIGURED = web.AppKey("api_push_token_configured", bool)


class ApiError(Exception):
    """An answer other than 200, raised by a handler and written by the middleware."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse.of(code, message, field)
        self.headers = dict(headers or {})


def error_response(exc: ApiError) -> web.Response:
    return web.json_response(
        exc.body.model_dump(mode="json"), status=exc.status, headers=exc.headers
    )


# --- auth and errors -------------------------------------------------------------------------


def _required_scope(request: web.Request, tokens: TokenStore) -> str | None:
    path = request.path
    if path == OPENAPI_PATH:
        return None
    if path == USAGE_PATH and request.method == "POST":
        return "write" if tokens.has_write_tokens else None
    return "read" if tokens.require_auth_for_reads else None


def _unauthorized(message: str, invalid: bool) -> ApiError:
    challenge = 'Bearer realm="aifinops"'
    if invalid:
        challenge += ', error="invalid_token"'
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def _authorize(request: web.Request) -> None:
    """Check the bearer token against the route's scope (see :mod:`aifinops.web.auth`);
    records the granted scope in ``request[API_SCOPE]``."""
    tokens = request.app[API_TOKENS]
    needed = _required_scope(request, tokens)
    present, token = bearer_token(request.headers.get("Authorization"))
    scope = None
    is_usage = request.path == USAGE_PATH
    if present and token is None and not is_usage:
        raise _unauthorized("the Authorization header is not 'Bearer <token>'", invalid=True)
    if token is not None:
        scope = tokens.scope_of(token)
        # /api/v1/usage also takes the push token (tokens.push.bearer_token_file), which the
        # usage handler checks itself.
        if scope is None and not (is_usage and request.app[PUSH_TOKEN_CONFIGURED]):
            raise _unauthorized("unknown bearer token", invalid=True)
    request[API_SCOPE] = scope or ""
    if needed is None:
        return
    if scope is None:
        if is_usage and request.app[PUSH_TOKEN_CONFIGURED]:
            return  # the usage handler checks the push token
        raise _unauthorized(f"this route needs a bearer token with the {needed} scope", False)
    if needed == "write" and scope != "write":
        raise ApiError(403, "forbidden", "this route needs a token with the write scope")


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Auth and the error model for ``/api/*``; other paths pass through untouched."""
    if not request.path.startswith("/api/"):
        response: web.StreamResponse = await handler(request)
        return response
    try:
        _authorize(request)
        response = await handler(request)
        return response
    except ApiError as exc:
        if exc.status in (401, 403):
            log.info("api_denied", path=request.path, status=exc.status)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code: ErrorCode = "not_found" if exc.status == 404 else "invalid_request"
        message = {
            404: f"no route {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: "request body too large",
        }.get(exc.status, exc.reason or "bad request")
        return error_response(ApiError(exc.status, code, message))
    except Exception:
        log.exception("api_failed", path=request.path)
        return error_response(ApiError(500, "internal_error", "internal error"))


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    body: bytes
    content_type: str
    charset: str | None
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, response: web.Response) -> CachedAnswer:
        body = response.body
        assert isinstance(body, bytes)
        extra = tuple(
            (k, v) for k, v in response.headers.items() if k.lower() == "content-disposition"
        )
        return cls(body, response.content_type, response.charset, extra)

    def response(self) -> web.Response:
        return web.Response(
            body=self.body,
            content_type=self.content_type,
            charset=self.charset,
            headers=dict(self.headers),
        )


CHARGEBACK_PATH = f"{PREFIX}/chargeback"
CHARGEBACK_FORMATS = ("json", "csv", "focus")


@dataclass(frozen=True, slots=True)
class PreparedAnswers:
    """The default read requests' answers for one finance report, built by the refresh on
    its CPU worker (:func:`prepare_answers`, the ``prepare`` hook ``web/app.py`` gives the
    :class:`~aifinops.refresh.Refresher`) and published in the same snapshot as ``finance``.
    Keys are ``request.path_qs`` as :class:`ReadCache` keys them, in install order."""

    finance: FinanceReport
    answers: Mapping[str, CachedAnswer]


SUMMARY_PATH = f"{PREFIX}/summary"
BUDGETS_PATH = f"{PREFIX}/budgets"
RECOMMENDATIONS_PATH = f"{PREFIX}/recommendations"
# The requests the refresh can answer ahead (``request.path_qs``): every read route without
# options, and the current month's chargeback in each format (the bare path is the JSON).
PREPARABLE: tuple[str, ...] = (
    SUMMARY_PATH,
    BUDGETS_PATH,
    RECOMMENDATIONS_PATH,
    *(f"{CHARGEBACK_PATH}?format={fmt}" for fmt in CHARGEBACK_FORMATS),
    CHARGEBACK_PATH,
)
# A preparable request asked for within this many seconds is prepared with each refresh.
# Why not all of them always: at 10k GPUs the seven cost ~0.65 s of CPU a refresh (the FOCUS
# file about half; bench/README.md), work that was only done when asked for; on demand, a
# refresh does ahead exactly the work its first requests would have done on the side thread.
PREPARE_WINDOW_S = 600.0
