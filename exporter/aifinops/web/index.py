"""The ``/`` status page, as the inline app (``web/app.py``) and the front (``web/front.py``)
both serve it: each source's state, data age and last error (escaped), and the links."""

from __future__ import annotations

import html
from collections.abc import Iterable

from aiohttp import web

from aifinops.version import __version__

SourceRow = tuple[str, bool, float | None, str | None]
"""A source's name, whether it is up, its data's age in seconds and its last error."""


def index_page(sources: Iterable[SourceRow], telemetry: str) -> web.Response:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'up' if up else 'down'}</td>"
        f"<td>{'' if age is None else f'{age:.0f}s'}</td>"
        f"<td>{html.escape(error or '')}</td></tr>"
        for name, up, age, error in sources
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>AI FinOps exporter</title></head><body>
<h1>AI FinOps exporter {html.escape(__version__)}</h1>
<p><a href="{html.escape(telemetry)}">{html.escape(telemetry)}</a> &middot;
<a href="/healthz">/healthz</a> &middot;
<a href="/readyz">/readyz</a></p>
<table border="1" cellpadding="4"><tr><th>source</th><th>state</th><th>data age</th>
<th>last error</th></tr>{rows}</table></body></html>"""
    return web.Response(text=page, content_type="text/html")
