"""The JSON API's error body, ``{"error": {"code", "message", "field"}}`` (see
:mod:`aifinops.web.api`), apart from the endpoints' schemas (:mod:`aifinops.web.schemas`,
which re-exports it) so that the front process (``web/front.py``), which answers auth
errors itself, does not import the model through them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- errors --------------------------------------------------------------------------------

ErrorCode = Literal[
    "invalid_request",  # 400/422: a field is missing, malformed or out of range
    "unauthorized",  # 401: no or bad bearer token
    "forbidden",  # 403: the token lacks the scope
    "not_found",  # 404: unknown initiative, workload or route
    "unavailable",  # 503: no report yet (first refresh pending)
    "internal_error",  # 500: a bug; the request may be retried
]


class ErrorDetail(_Schema):
    code: ErrorCode
    message: str
    field: str | None = None  # dotted path of the offending field, when there is one


class ErrorResponse(_Schema):
    error: ErrorDetail

    @classmethod
    def of(cls, code: ErrorCode, message: str, field: str | None = None) -> ErrorResponse:
        return cls(error=ErrorDetail(code=code, message=message, field=field))


def error_from_validation(exc: ValidationError) -> ErrorResponse:
    """The first validation error as an ``invalid_request`` naming the field (dotted path,
    ``None`` for a model-level rule); further errors are counted in the message."""
    errors = exc.errors()
    if not errors:
        return ErrorResponse.of("invalid_request", "invalid request")
    first = errors[0]
    path = ".".join(str(p) for p in first["loc"]) or None
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return ErrorResponse.of("invalid_request", message, path)
