"""``POST /api/v1/usage``: pushed token usage (schema and store in ``usage.py``).

Answers ``202 {"accepted": n, "duplicates": d}``, or an error body
``{"error": <reason>, "message": ..., "details": [...]}`` with a machine-readable reason:

=====  ====================  ===========================================================
401    ``unauthorized``      ``tokens.push.bearer_token_file`` is set and the request's
                             ``Authorization: Bearer`` token does not match
413    ``body_too_large``    body over ``max_body_bytes`` (declared or actual)
429    ``rate_limited``      over ``rate_limit_per_second`` (burst ``rate_limit_burst``) for
                             this client (its verified token, else its address);
                             ``Retry-After``
413    ``too_many_records``  more than ``max_records_per_batch`` records
400    ``invalid_json``      body is not JSON
422    ``invalid_record``    schema violation; ``details`` lists ``{"field", "message"}``
422    ``too_many_tokens``   a count over ``max_tokens_per_record``
422    ``series_limit``      the batch would create series past ``max_series``
503    ``not_durable``       the push journal (beside ``state.path``) cannot be written;
                             nothing was added, retry (``Retry-After``)
=====  ====================  ===========================================================

A 202 means the batch is durable: with ``state.path`` it was written to the push journal
and ``fsync``-ed first (``usage.py``), so it survives SIGTERM and a crash, and its
record ids stay remembered across the restart.

A rejected batch adds nothing. The body is read from the stream with its own cap, so
``max_body_bytes`` may exceed the app's ``client_max_size``; a ``gzip`` or ``deflate`` body
(``Content-Encoding``) is inflated under the same cap, any other encoding is refused with 415
(``web/limits.py``).
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from aifinops.safefile import read_secret_file
from aifinops.settings import UsagePushSettings
from aifinops.text import loads_json
from aifinops.usage import Reason, UsageBatch, UsageRejected, UsageStore
from aifinops.web.auth import API_SCOPE, bearer_token
from aifinops.web.limits import BodyRefused, read_body
from aifinops.web.ratelimit import RateLimiter, client_key, retry_after

log = structlog.get_logger("aifinops.web.usage")

USAGE_STORE = web.AppKey("usage_store", UsageStore)
USAGE_SETTINGS = web.AppKey("usage_settings", UsagePushSettings)
USAGE_LIMITER = web.AppKey("usage_limiter", RateLimiter)


def _error(status: int, reason: Reason, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, "message": message, **extra}, status=status)


def _authenticated(request: web.Request, token_file: Path | None) -> tuple[bool, str | None]:
    """``(allowed, identity)``: the bearer token that passed a check (the API middleware's
    write scope, or ``tokens.push.bearer_token_file``), else ``None`` (an open endpoint)."""
    _, token = bearer_token(request.headers.get("Authorization"))
    if request.get(API_SCOPE) == "write":
        return True, token
    if token_file is None:
        return True, None
    try:
        expected = read_secret_file(token_file).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError, ValueError):
        log.error("usage_token_file_unreadable", path=str(token_file))
        return False, None
    if token is None or not expected:
        return False, None
    if hmac.compare_digest(token.encode(), expected.encode()):
        return True, token
    return False, None


async def handle_usage(request: web.Request) -> web.Response:
    settings = request.app[USAGE_SETTINGS]
    store = request.app[USAGE_STORE]
    # A write-scope API token (checked by the API middleware) also admits a batch.
    allowed, identity = _authenticated(request, settings.bearer_token_file)
    if not allowed:
        return _error(401, "unauthorized", "missing or wrong bearer token")
    limiter = request.app.get(USAGE_LIMITER)
    if limiter is not None:
        wait = limiter.take(client_key(identity, request.remote))
        if wait > 0:
            resp = _error(429, "rate_limited", "too many batches; retry after Retry-After seconds")
            resp.headers["Retry-After"] = retry_after(wait)
            return resp
    try:
        # gzip / deflate accepted, inflated under the same cap (web/limits.py)
        body = await read_body(request, settings.max_body_bytes)
    except BodyRefused as exc:  # a corrupt or cut-off compressed body
        return _error(exc.status, "invalid_json", str(exc))
    if body is None:
        return _error(413, "body_too_large", f"body over {settings.max_body_bytes} bytes")
    try:
        doc = loads_json(body)
    except (ValueError, RecursionError) as exc:
        return _error(400, "invalid_json", f"body is not JSON: {exc}")
    records = doc.get("records") if isinstance(doc, dict) else None
    if isinstance(records, list) and len(records) > settings.max_records_per_batch:
        return _error(
            413,
            "too_many_records",
            f"{len(records)} records; at most {settings.max_records_per_batch} per batch",
        )
    try:
        batch = UsageBatch.model_validate(doc)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
            for err in exc.errors()[:50]
        ]
        return _error(422, "invalid_record", "the batch does not match the schema", details=details)
    try:
        if store.journal is None:
            result = store.apply(batch)
        else:  # waits for the journal's fsync: durable before the 202, off the event loop
            result = await asyncio.to_thread(store.apply, batch)
    except UsageRejected as exc:
        resp = _error(exc.status, exc.reason, str(exc))
        if exc.status == 503:
            resp.headers["Retry-After"] = "5"
        return resp
    return web.json_response(
        {"accepted": result.accepted, "duplicates": result.duplicates}, status=202
    )
