"""Typed ``web.AppKey``s and request-scoped keys: the only way handlers and plugins reach shared state."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from higgs.config import HiggsSettings
    from higgs.interfaces import Provider, Router, WireFormat
    from higgs.records import RequestRecord
    from higgs.registry import Registry
    from higgs.server.gateway import Gateway

SETTINGS: web.AppKey[HiggsSettings] = web.AppKey("higgs.settings")
REGISTRY: web.AppKey[Registry] = web.AppKey("higgs.registry")
FORMATS: web.AppKey[dict[str, WireFormat]] = web.AppKey("higgs.formats")
PROVIDERS: web.AppKey[dict[str, Provider]] = web.AppKey("higgs.providers")
ROUTERS: web.AppKey[list[Router]] = web.AppKey("higgs.routers")
GATEWAY: web.AppKey[Gateway] = web.AppKey("higgs.gateway")
STARTED_AT: web.AppKey[float] = web.AppKey("higgs.started_at")

# Request-scoped keys (``request[KEY]``).
REQUEST_ID: web.RequestKey[str] = web.RequestKey("higgs.request_id")
RECORD: web.RequestKey[RequestRecord] = web.RequestKey("higgs.record")
TIMEOUT: web.RequestKey[asyncio.Timeout] = web.RequestKey("higgs.timeout")
STREAM: web.RequestKey[web.StreamResponse] = web.RequestKey("higgs.stream")
