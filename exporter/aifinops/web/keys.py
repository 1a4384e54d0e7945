"""The application's keys, apart from the app factory so that the reload path
(``web/lifecycle.py``) reads the refresher without importing ``web/app.py``."""

from __future__ import annotations

import asyncio

import httpx
from aiohttp import web

from aifinops.assemble import UpstreamTransport
from aifinops.refresh import Refresher
from aifinops.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REFRESHER = web.AppKey("refresher", Refresher)
HTTP_CLIENT = web.AppKey("http_client", httpx.AsyncClient)
UPSTREAM_TRANSPORT = web.AppKey("upstream_transport", UpstreamTransport)
REFRESH_TASK = web.AppKey("refresh_task", asyncio.Task[None])
