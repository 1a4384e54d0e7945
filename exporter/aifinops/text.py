"""Text from upstreams and pushes enters here: JSON decoded with invalid Unicode replaced,
and label values kept or dropped (:func:`clean_value`). A neutral module: the sources and the
push endpoint (``web/usage.py``) both use it, and neither imports the other.

Why one place: every string the exporter publishes (a tenant, a model, a label value) is
encoded to UTF-8 when the page is rendered, and a string that cannot be encoded there (a
lone UTF-16 surrogate such as ``"\\ud800"``) used to fail the render, long after its source
had been accepted. Each source's decoders are strict where they can be: msgspec and the
exposition parser (``promtext.decode_page``) refuse invalid UTF-8 and lone surrogates. The
stdlib ``json`` module, which every JSON source falls back to for the bodies msgspec's typed
path refuses, does not: it decodes bytes with ``surrogatepass`` and accepts ``\\ud800``
escapes. So every stdlib JSON decode of upstream or pushed text goes through
:func:`loads_json`, which replaces both with U+FFFD before decoding; nothing it returns can
fail to encode later.
"""

from __future__ import annotations

import json
import re
from typing import Any

REPLACEMENT = "\\ufffd"

MAX_LABEL_VALUE = 256
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_EMPTY_VALUES = frozenset({"", "none", "null", "undefined", "n/a"})

# An escaped backslash (skipped, so that ``\\\\ud800`` stays the text "\\ud800"), a valid
# surrogate pair (kept), or a lone surrogate escape (replaced).
_ESCAPE = re.compile(
    r"\\(?:\\|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|u[dD][89a-fA-F][0-9a-fA-F]{2})"
)
_ANY_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _keep_or_replace(match: re.Match[str]) -> str:
    text = match.group()
    return text if len(text) in (2, 12) else REPLACEMENT


def clean_json_text(text: str) -> str:
    """``text`` (JSON) with every lone surrogate escape replaced by ``\\ufffd``."""
    if _ANY_SURROGATE.search(text) is None:
        return text
    return _ESCAPE.sub(_keep_or_replace, text)


def loads_json(data: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads(data)``, but every string in the result encodes to UTF-8: invalid UTF-8
    bytes and lone surrogate escapes become U+FFFD. A UTF-8 byte order mark is skipped, as
    ``json.loads`` does for bytes. Raises what ``json.loads`` raises for text that is not
    JSON (``ValueError``, ``RecursionError``)."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8-sig", "replace")
    return json.loads(clean_json_text(text))


def clean_value(value: str | None) -> str | None:
    """A label value fit to keep: ``None`` for empty/``None``-like or email-like values;
    trimmed and capped at :data:`MAX_LABEL_VALUE` characters."""
    if value is None:
        return None
    v = value.strip()
    if v.lower() in _EMPTY_VALUES or _EMAIL_LIKE.search(v):
        return None
    return v[:MAX_LABEL_VALUE]


__all__ = ["MAX_LABEL_VALUE", "clean_json_text", "clean_value", "loads_json"]
