"""Middlewares: request id, errors in the caller's format, auth, rate limit, body limit, timeout, CORS.

Order (outermost first): ``outer`` (request id, request record) -> ``cors`` (preflight) -> ``errors``
(renders every failure) -> ``guard`` (body size, auth, rate limit) -> ``deadline`` (timeout) -> handler.
Headers every response needs (``x-request-id``, CORS) are added in ``on_response_prepare`` so that
streamed responses get them too.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from higgs.errors import ApiError
from higgs.messages import ErrorInfo
from higgs.records import RequestRecord
from higgs.server import keys

log = logging.getLogger("higgs.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/health"})
EXPOSED_HEADERS = "x-request-id, x-higgs-provider, x-higgs-route, retry-after"

_KIND_BY_STATUS = {
    400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found", 405: "invalid_request",
    408: "timeout", 413: "request_too_large", 415: "invalid_request", 422: "invalid_request", 429: "rate_limit",
    502: "upstream_unreachable", 503: "overloaded", 504: "timeout", 529: "overloaded",
}


# --------------------------------------------------------------------------------------------------
# Error rendering
# --------------------------------------------------------------------------------------------------


def error_response(request: web.Request, info: ErrorInfo, headers: dict[str, str] | None = None) -> web.Response:
    """Render ``info`` in the wire format that claims ``request.path`` (OpenAI's shape by default)."""
    fmt = format_for_path(request.app, request.path)
    status, body = fmt.render_error(info) if fmt is not None else (info.status, _fallback_error(info))
    response = web.json_response(body, status=status or info.status, headers=headers)
    if info.retry_after is not None:
        response.headers["retry-after"] = str(max(1, math.ceil(info.retry_after)))
    return response


def format_for_path(app: web.Application, path: str) -> Any:
    """The first format whose ``claims(path)`` is true, else the ``openai`` format, else None.

    ``openai`` is asked last: it claims every path but Anthropic's, so it is the catch-all.
    """
    formats = app.get(keys.FORMATS, {})
    ordered = sorted(formats.values(), key=lambda f: getattr(f, "name", "") == "openai")
    for fmt in ordered:
        try:
            if fmt.claims(path):
                return fmt
        except Exception:  # a buggy format must not break error rendering for everyone
            log.exception("format %s: claims() failed", getattr(fmt, "name", "?"))
    return formats.get("openai") or next(iter(formats.values()), None)


def _fallback_error(info: ErrorInfo) -> dict[str, Any]:
    """OpenAI's error shape, used when no format plugin is loaded at all."""
    return {"error": {"message": info.message, "type": info.kind, "param": info.param, "code": info.code}}


def info_for(exc: BaseException) -> ErrorInfo:
    """The ``ErrorInfo`` for any exception reaching the error middleware."""
    if isinstance(exc, ApiError):
        return exc.info
    if isinstance(exc, web.HTTPException):
        status = exc.status
        message = exc.text if exc.text and not exc.text.startswith(f"{status}:") else exc.reason
        if status == 404:
            message = "Not found: no route for this path."
        elif status == 405:
            message = f"Method not allowed. Allowed: {exc.headers.get('Allow', '')}".rstrip(": ")
        elif status == 413:
            message = f"Request body too large: {exc.text or exc.reason}"
        return ErrorInfo(status=status, kind=_KIND_BY_STATUS.get(status, "api_error" if status >= 500 else
                                                                      "invalid_request"),
                         message=message, code="method_not_allowed" if status == 405 else None)
    if isinstance(exc, ValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"])
        return ErrorInfo(status=400, kind="invalid_request", message=f"Invalid request: {where}: {first['msg']}",
                         param=where or None)
    if isinstance(exc, TimeoutError):
        return ErrorInfo(status=504, kind="timeout", message="The request timed out.")
    return ErrorInfo(status=500, kind="api_error", message="Internal server error; see the server log.")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure (401/404/405/413/429/500/504, ...) in the caller's format, never an empty body."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(request, info_for(exc), headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        stream: web.StreamResponse | None = request.get(keys.STREAM)
        if stream is not None and stream.prepared:
            log.warning("request %s failed after streaming began: %r", request.get(keys.REQUEST_ID), exc)
            if request.transport is not None:  # end abruptly, so the client can tell the answer is incomplete
                request.transport.close()
            return stream
        info = info_for(exc)
        if info.status >= 500 and not isinstance(exc, (ApiError, TimeoutError)):
            log.exception("request %s failed", request.get(keys.REQUEST_ID))
        return error_response(request, info)
    if response.status >= 400 and not response.prepared and _is_empty(response):
        reason = response.reason or "Error"
        return error_response(request, ErrorInfo(status=response.status, kind=_KIND_BY_STATUS.get(
            response.status, "api_error"), message=reason))
    return response


def _is_empty(response: web.StreamResponse) -> bool:
    return isinstance(response, web.Response) and not response.body


# --------------------------------------------------------------------------------------------------
# Request id, records, CORS
# --------------------------------------------------------------------------------------------------


@web.middleware
async def outer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id; emit a ``RequestRecord`` for failed requests the gateway did not record."""
    given = request.headers.get("x-request-id", "")
    request[keys.REQUEST_ID] = given if 0 < len(given) <= 128 and given.isprintable() else f"req_{uuid.uuid4().hex}"
    started = time.time()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        record: RequestRecord | None = request.get(keys.RECORD)
        if record is None and status >= 400 and request.path not in OPEN_PATHS:
            fmt = format_for_path(request.app, request.path)
            record = RequestRecord(time=started, request_id=request[keys.REQUEST_ID], endpoint=request.path,
                                   format_in=getattr(fmt, "name", "openai"), status=status,
                                   latency_ms=(time.time() - started) * 1000, error_type=_KIND_BY_STATUS.get(
                                       status, "api_error"))
        if record is not None:
            record.status = status  # the status the client got, whoever produced it
            if status >= 400 and record.error_type is None:
                record.error_type = _KIND_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request")
            emit_record(request.app, record)


def emit_record(app: web.Application, record: RequestRecord) -> None:
    """Fire ``higgs_request_finished`` for each listener separately: a failing one is logged and the
    others still get the record."""
    registry = app.get(keys.REGISTRY)
    if registry is None:
        return
    for impl in registry.pm.hook.higgs_request_finished.get_hookimpls():
        try:
            impl.function(*(record for _ in impl.argnames))  # an impl may take no argument
        except Exception:
            log.exception("plugin %s: higgs_request_finished failed", impl.plugin_name)


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """Whether ``origin`` matches an entry: exact, ``*``, or ``scheme://host:*`` (that host, any port or none)."""
    for entry in allowed:
        if entry == "*" or entry == origin:
            return True
        if entry.endswith(":*"):
            base = entry[:-2]
            if origin == base or (origin.startswith(base + ":") and origin[len(base) + 1:].isdigit()):
                return True
    return False


def _allowed_origin(app: web.Application, origin: str) -> str | None:
    allowed = app[keys.SETTINGS].server.cors_origins
    if "*" in allowed:
        return "*"
    return origin if origin_allowed(origin, allowed) else None


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights, and refuse browser requests from origins not in ``server.cors_origins``.

    Both run before auth (browsers send preflights without credentials). Refusing the request itself, not
    only the CORS headers, matters: a page may send a "simple" cross-origin POST (``text/plain`` body) with
    no preflight, and although it cannot read the answer, the request would still run and spend tokens.
    """
    origin = request.headers.get("Origin")
    if not origin:
        return await handler(request)
    allow = _allowed_origin(request.app, origin)
    if allow is None:
        return error_response(request, ErrorInfo(status=403, kind="permission", message=(
            f"Origin '{origin}' is not allowed (server.cors_origins).")))
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": allow,
            "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        })
    return await handler(request)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response carries, streamed ones included: request id and CORS."""
    if keys.REQUEST_ID in request:
        response.headers["x-request-id"] = request[keys.REQUEST_ID]
    origin = request.headers.get("Origin")
    if origin and "Access-Control-Allow-Origin" not in response.headers:
        allow = _allowed_origin(request.app, origin)
        if allow is not None:
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            if allow != "*":
                response.headers["Vary"] = "Origin"


# --------------------------------------------------------------------------------------------------
# Body size, auth, rate limit
# --------------------------------------------------------------------------------------------------


class TokenBucket:
    """Per-client token buckets: ``rate`` requests per minute, bursts up to ``rate``."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float | None:
        """Spend one token for ``client``; None if allowed, else seconds until a token is available."""
        now = self._clock()
        tokens, last = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:
                self._prune(now)
            return None
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.refill

    def _prune(self, now: float) -> None:
        full = [c for c, (t, last) in self._buckets.items() if t + (now - last) * self.refill >= self.capacity]
        for client in full:
            del self._buckets[client]


def guard(max_body: int, api_key: str | None, rate_limit: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Body size (413), auth (401) and rate limit (429), in that order; failed auth uses no quota."""
    bucket = TokenBucket(rate_limit) if rate_limit > 0 else None
    expected = api_key.encode() if api_key else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > max_body:
            raise ApiError(413, "request_too_large", f"Request body is {request.content_length} bytes; the limit is "
                                                     f"{max_body} bytes (server.max_body_size).")
        if request.path in OPEN_PATHS:
            return await handler(request)
        if expected is not None:
            credential = _credential(request)
            if credential is None:
                raise ApiError(401, "authentication", "Missing API key: send 'Authorization: Bearer KEY' or "
                                                      "'x-api-key: KEY'.", code="missing_api_key")
            if not hmac.compare_digest(credential.encode(), expected):
                raise ApiError(401, "authentication", "Invalid API key.", code="invalid_api_key")
        if bucket is not None:
            wait = bucket.take(request.remote or "unknown")
            if wait is not None:
                raise ApiError(429, "rate_limit", f"Rate limit of {rate_limit} requests per minute exceeded; retry "
                                                  f"in {math.ceil(wait)} s.", retry_after=wait,
                               code="rate_limit_exceeded")
        return await handler(request)

    return middleware


def _credential(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


# --------------------------------------------------------------------------------------------------
# Timeout
# --------------------------------------------------------------------------------------------------


def deadline(seconds: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Cancel a request's work after ``seconds`` (504). Streams reset the deadline on every event, so it
    bounds the wait for the first output and every pause after it, not the length of a long answer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(seconds) as scope:
                request[keys.TIMEOUT] = scope
                return await handler(request)
        except TimeoutError:
            stream: web.StreamResponse | None = request.get(keys.STREAM)
            if stream is not None and stream.prepared:
                log.warning("request %s: stream stalled for %.0f s, closed", request[keys.REQUEST_ID], seconds)
                return stream
            raise ApiError(504, "timeout", f"The request took longer than {seconds:g} s (server.timeout) and was "
                                           "cancelled.", code="timeout") from None

    return middleware
