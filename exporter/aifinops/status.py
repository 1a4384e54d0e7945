"""Health of the sources and of the refresh loop, as the exposition needs it; and
:func:`redact_text`, the one function every place that shows or logs a URL goes through.

Upstream URLs may carry credentials (``https://user:pass@host/``, ``?api_key=...``): the
exporter uses them, but never shows them. A URL's user information is replaced by
``REDACTED@`` and the value of every query parameter whose name looks like a secret
(:data:`SECRET_PARAMS`, or a name containing ``token``, ``secret``, ``password``, ``key``,
``signature`` or ``credential``) by ``REDACTED``. :func:`redact_text` does that for every URL
inside a free text (an error message, a traceback); the log processor
(:func:`redact_event`, installed by ``logs.py``), ``/readyz``, ``/`` and the configuration
error messages use it. It errs on the side of hiding: a parameter named ``monkey`` is
redacted too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# Why a source's fetch failed: the bounded ``reason`` label of ``aifinops_source_errors_total``
# (sources raise them in ``SourceError``, the exposition lists them all).
Reason = Literal["connect", "timeout", "http_status", "too_large", "parse", "invalid"]
REASONS: tuple[Reason, ...] = ("connect", "timeout", "http_status", "too_large", "parse", "invalid")

REDACTED = "REDACTED"
SECRET_PARAMS = frozenset(
    {"auth", "authorization", "code", "pass", "passwd", "pwd", "sig", "sign", "session", "jwt"}
)
_SECRET_WORDS = ("token", "secret", "password", "key", "signature", "credential", "apikey")
# scheme://[userinfo@]rest, up to whitespace, a quote or an angle bracket, without a trailing
# punctuation mark: URLs in messages, reprs (URL('...')) and HTML.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]*[^\s\"'<>`.,:;)\]]")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@")
_PARAM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def _secret_name(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    compact = lowered.replace("_", "")
    return lowered in SECRET_PARAMS or any(w in compact for w in _SECRET_WORDS)


def redact_url(url: str) -> str:
    """``url`` without credentials: user information and secret-looking query values
    replaced by :data:`REDACTED` (whatever is not a URL is returned unchanged)."""
    out = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", url, count=1)
    if "?" not in out and ";" not in out:
        return out
    return _PARAM.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}={REDACTED}" if _secret_name(m.group(2)) else m.group(0)
        ),
        out,
    )


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def redact_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """A structlog processor: every string in the event (a formatted traceback included)
    through :func:`redact_text`. Runs after ``format_exc_info``, before the renderer."""
    for key, value in event.items():
        event[key] = _redact_value(value)
    return event


class ScrapeTargets(Protocol):
    """A source over several scrape targets, as its self-metrics need it: each target's
    state at the last read, and the series skipped as unreadable since start. A source
    declares it (``Source.targets``); the exposition renders it
    (``exposition.targets.token_source_families``) without knowing the source's class."""

    @property
    def name(self) -> str: ...

    @property
    def skipped_total(self) -> int: ...

    def target_status(self) -> Iterable[tuple[str, bool]]: ...


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source after a refresh.

    ``age_seconds`` is the age of the data in use (``None`` when none is in use);
    ``stale`` is true when good data existed but passed its staleness limit and was dropped;
    ``errors`` counts failed fetches per reason since start.
    """

    name: str
    up: bool
    age_seconds: float | None
    stale: bool
    duration_seconds: float
    errors: Mapping[str, int] = field(default_factory=dict)
    last_error: str | None = None

    def __post_init__(self) -> None:
        # Error messages name the URL they failed on: shown on /readyz and /, never its secrets.
        if self.last_error is not None:
            object.__setattr__(self, "last_error", redact_text(self.last_error))


@dataclass(frozen=True, slots=True)
class RefreshStatus:
    sources: tuple[SourceStatus, ...]
    duration_seconds: float
    completed_at: float
    refreshes: int
