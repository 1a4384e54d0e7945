"""structlog set-up: every log line of the process, in one format, one line per event.

Formats: ``json`` (one JSON object a line), ``logfmt`` (``key=value`` pairs, as Prometheus'
own ``--log.format=logfmt``), ``console`` (coloured, for a terminal; a traceback spans lines)
and ``auto`` (json unless stderr is a terminal). ``--log.format`` takes ``logfmt`` or ``json``.

The standard library's loggers (aiohttp's ``aiohttp.server`` "Error handling request",
asyncio's "Task exception was never retrieved", httpx), Python warnings and uncaught
exceptions go through the same processors: a traceback becomes one ``exception`` field (its
newlines escaped), never lines of plain text in the stream.

Log fields never carry a user identifier, an email, an API key or a bearer token: sources log
their name and a reason, the web layer logs no request headers.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from aifinops.status import redact_event

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "json", "logfmt", "console")
# logfmt puts these first, in this order (Prometheus: ts, level, msg); the rest follow sorted.
_LOGFMT_FIRST = ["timestamp", "level", "logger", "event"]
_HANDLER_NAME = "aifinops"


def _renderer(fmt: str) -> Processor:
    use = fmt
    if fmt == "auto":
        use = "console" if sys.stderr.isatty() else "json"
    if use == "json":
        return structlog.processors.JSONRenderer()
    if use == "logfmt":
        # Newlines and quotes in values are escaped: one event, one line.
        return structlog.processors.LogfmtRenderer(
            key_order=_LOGFMT_FIRST, drop_missing=True, bool_as_flag=False
        )
    return structlog.dev.ConsoleRenderer()


def _logger_name(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The standard library logger's name, as ``logger`` (structlog's own loggers carry none)."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict.setdefault("logger", record.name)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Route structlog and the standard library's logging to stderr in ``fmt`` at ``level``.
    Safe to call again (a configuration reload): the handler is replaced, not added."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    renderer = _renderer(fmt)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            redact_event,  # upstream URLs may hold credentials (status.redact_text)
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            _logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # the record's exc_info (aiohttp's "Error handling request") as one field
            structlog.processors.format_exc_info,
            redact_event,  # aiohttp's and httpx's records and tracebacks too
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    # Replace every handler (basicConfig's, a previous call's): one writer, one format.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # aiohttp's access log would print every scrape; keep it at warning.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # httpx logs every request at info; the refresh line already says what was fetched.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # warnings.warn (a RuntimeWarning at shutdown included) through the "py.warnings" logger.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C before the signal handlers exist
        structlog.get_logger("aifinops").info("interrupted")
        return
    structlog.get_logger("aifinops").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    structlog.get_logger("aifinops").critical(
        "uncaught_exception_in_thread",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
