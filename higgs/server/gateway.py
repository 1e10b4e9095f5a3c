"""The gateway pipeline behind every ``FormatRoute`` with an ``operation``.

parse (client format) -> route (strategies in order) -> for each provider of the decision (fallback order):
pass-through when the provider speaks the client's format, else the canonical call + render. A retryable
``ProviderError`` (or a connection failure) before the first byte moves on to the next provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import BaseModel, ValidationError

from higgs.config import LOCAL_PROVIDER, HiggsSettings
from higgs.errors import ApiError, InvalidRequestError, ProviderError, RoutingError, UnknownModelError
from higgs.interfaces import (
    CallContext,
    Operation,
    Provider,
    RawRequest,
    RawResponse,
    RouteDecision,
    RouteQuery,
    Router,
    WireFormat,
)
from higgs.messages import ModelInfo, StreamError, StreamEvent, StreamStart, Usage
from higgs.records import RequestRecord
from higgs.registry import Registry
from higgs.server import keys
from higgs.server.relay import relay, usage_meter
from higgs.server.streaming import StreamStats, guard_events, idle_limited, write_stream

log = logging.getLogger("higgs.gateway")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
})
#: Upstream statuses after which the next provider of a fallback chain is tried.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RouterServices:
    """What router factories get besides the settings (``RouterSpec.factory(settings, services)``).

    Attributes:
        providers: provider instances by name (``higgs`` is the local one); ``serves(model)`` tells
            whether a provider has a model by exact name.
        formats: wire format instances by name.
        registry: everything the plugins registered.
    """

    providers: Mapping[str, Provider]
    formats: Mapping[str, WireFormat]
    registry: Registry


class _Retry(Exception):
    """An attempt failed in a way the next provider may fix."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.info.message)
        self.error = error


class Gateway:
    """Runs operations for the format routes: parse, route, call providers with fallback, render."""

    def __init__(self, settings: HiggsSettings, registry: Registry, formats: Mapping[str, WireFormat],
                 providers: Mapping[str, Provider], routers: list[Router]) -> None:
        self.settings = settings
        self.registry = registry
        self.formats = formats
        self.providers = providers
        self.routers = routers

    def handler(self, fmt: WireFormat, operation: Operation) -> Handler:
        """The aiohttp handler serving ``operation`` for clients of ``fmt``."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.run(request, fmt, operation)

        handle.__name__ = f"{fmt.name}_{operation}"
        return handle

    # -- routing ------------------------------------------------------------------------------------

    async def route(self, query: RouteQuery) -> RouteDecision:
        """Ask each strategy in order; with no decision, fall back to ``[default]`` or a 404."""
        for router in self.routers:
            decision = await router.route(query)
            if decision is not None:
                if not decision.providers:
                    raise RoutingError(f"routing strategy '{router.name}' chose no provider for '{query.model}'")
                return decision
        default = self.settings.default.provider
        if default != LOCAL_PROVIDER and default in self.providers:
            return RouteDecision(providers=(default,), model=query.model, rule="default", method="default")
        local = self.providers.get(LOCAL_PROVIDER)
        available = [m.id for m in await local.list_models()] if local is not None else []
        raise UnknownModelError(query.model, available)

    # -- the pipeline -------------------------------------------------------------------------------

    async def run(self, request: web.Request, fmt: WireFormat, operation: Operation) -> web.StreamResponse:
        """Serve one client request end to end."""
        record = RequestRecord(time=time.time(), request_id=request[keys.REQUEST_ID], endpoint=request.path,
                               format_in=fmt.name)
        request[keys.RECORD] = record
        started = time.perf_counter()
        try:
            if operation == "models":
                return await self._models(fmt, request.match_info.get("model_id"))
            body_bytes = await request.read()
            body = _parse_json(body_bytes)
            canonical = _parse(fmt, operation, body, request)
            record.model = canonical.model
            record.stream = bool(getattr(canonical, "stream", False))
            decision = await self.route(RouteQuery(model=canonical.model, operation=operation,
                                                   request=canonical if operation == "chat" else None))
            record.route, record.routing_method = decision.rule, decision.method
            return await self._dispatch(request, fmt, operation, body, body_bytes, canonical, decision, record,
                                        started)
        except ApiError as err:
            record.status, record.error_type = err.status, err.info.kind
            raise
        finally:
            record.latency_ms = (time.perf_counter() - started) * 1000

    async def _dispatch(self, request: web.Request, fmt: WireFormat, operation: Operation, body: dict[str, Any],
                        body_bytes: bytes, canonical: Any, decision: RouteDecision, record: RequestRecord,
                        started: float) -> web.StreamResponse:
        last: ApiError | None = None
        forwardable = self._forwardable(request)
        for index, name in enumerate(decision.providers):
            provider = self.providers.get(name)
            if provider is None:
                last = ApiError(500, "api_error", f"route '{decision.rule}' names provider '{name}', which is not "
                                                  "configured")
                continue
            call = CallContext(request_id=request[keys.REQUEST_ID], client_format=fmt.name,
                               headers=forwardable, route=decision, path=request.path)
            record.provider, record.local = name, provider.local
            record.format_out = provider.upstream_format or "canonical"
            has_next = index + 1 < len(decision.providers)
            try:
                if provider.upstream_format == fmt.name and not provider.local:
                    response = await self._passthrough(request, fmt, operation, provider, call, body, body_bytes,
                                                       decision, has_next, record, started)
                else:
                    response = await self._translate(request, fmt, operation, provider, call, canonical, decision,
                                                     record, started)
            except Exception as err:
                stream = request.get(keys.STREAM)
                if stream is not None and stream.prepared:
                    raise  # bytes already reached the client: no other provider can take over now
                error = _retryable(err, name)
                if error is None:
                    raise
                if not has_next:
                    if error is err:
                        raise
                    raise error from err
                last = error
                log.warning("provider %s failed (%s); trying %s", name, error.info.message,
                            decision.providers[index + 1])
                continue
            record.extra["attempts"] = index + 1
            return response
        assert last is not None
        raise last

    def _forwardable(self, request: web.Request) -> CIMultiDictProxy[str]:
        """The client's headers as providers may see them: the gateway's own API key never leaves higgs
        (a client authenticating to higgs must not hand that key to an upstream)."""
        key = self.settings.server.api_key
        if key is None:
            return request.headers
        secret = key.get_secret_value()
        kept: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lowered = name.lower()
            if lowered == "authorization" and value[7:].strip() == secret and value[:7].lower() == "bearer ":
                continue
            if lowered == "x-api-key" and value.strip() == secret:
                continue
            kept.add(name, value)
        return CIMultiDictProxy(kept)

    # -- pass-through -------------------------------------------------------------------------------

    async def _passthrough(self, request: web.Request, fmt: WireFormat, operation: Operation, provider: Provider,
                           call: CallContext, body: dict[str, Any], body_bytes: bytes, decision: RouteDecision,
                           has_next: bool, record: RequestRecord, started: float) -> web.StreamResponse:
        if body.get("model") != decision.model:
            body_bytes = json.dumps(fmt.rewrite_model(body, decision.model)).encode()
        headers = [(k, v) for k, v in call.headers.items() if k.lower() not in HOP_BY_HOP]
        raw = RawRequest(method=request.method, path=request.path, query=request.query_string, headers=headers,
                         body=body_bytes)
        upstream: RawResponse = await provider.passthrough(raw, call)
        if has_next and upstream.status in RETRYABLE_STATUSES:
            payload = b"".join([chunk async for chunk in upstream.body])
            if upstream.close is not None:
                await upstream.close()
            info = fmt.parse_upstream_error(upstream.status, payload, dict(upstream.headers))
            raise _Retry(ApiError.from_info(info))
        response = (web.Response(status=upstream.status) if upstream.content is not None
                    else web.StreamResponse(status=upstream.status))
        for key, value in upstream.headers:
            if key.lower() not in HOP_BY_HOP and key.lower() not in ("content-encoding", "x-request-id"):
                response.headers.add(key, value)
        _route_headers(response, provider.name, decision)
        meter = usage_meter(fmt, operation, upstream.status, response.headers.get("content-type", ""))
        if isinstance(response, web.Response) and upstream.content is not None:
            # A body already read: one write with its length, no chunked framing.
            if upstream.close is not None:
                await upstream.close()
            response.body = upstream.content
            if meter is not None:
                meter.feed(upstream.content)
                if (usage := await meter.result()) is not None:
                    _usage(record, usage)
            return response
        request[keys.STREAM] = response
        _disarm_deadline(request)
        # A body that ends by itself on a stalled upstream needs no per-chunk watchdog here.
        chunks = (upstream.body if upstream.read_timeout is not None
                  else idle_limited(upstream.body, self.settings.server.timeout))
        try:
            first = await relay(response, request, chunks, meter, upstream.exhausted)
        finally:
            if upstream.close is not None:
                await upstream.close()
        if first is not None and record.stream:
            record.ttft_ms = (first - started) * 1000
        usage = await meter.result() if meter is not None else None
        if usage is not None:
            _usage(record, usage)
        return response

    # -- translation --------------------------------------------------------------------------------

    async def _translate(self, request: web.Request, fmt: WireFormat, operation: Operation, provider: Provider,
                         call: CallContext, canonical: Any, decision: RouteDecision, record: RequestRecord,
                         started: float) -> web.StreamResponse:
        canonical = canonical.model_copy(update={"model": decision.model})
        if provider.local and operation in ("chat", "completion"):
            cap = self.settings.server.max_tokens
            canonical.max_tokens = min(canonical.max_tokens or cap, cap)
        if operation == "count_tokens":
            count = await provider.count_tokens(canonical, call)
            record.input_tokens = count
            return _json(fmt.render_count_tokens(count), provider, decision)
        if operation == "embedding":
            embedded = await provider.embed(canonical, call)
            _usage(record, embedded.usage)
            return _json(fmt.render_embedding(embedded, canonical), provider, decision)
        if getattr(canonical, "stream", False):
            return await self._stream(request, fmt, operation, provider, call, canonical, decision, record, started)
        if operation == "chat":
            chat = await provider.chat(canonical, call)
            _usage(record, chat.usage)
            rendered = fmt.render_chat(chat, canonical)
        else:
            completion = await provider.complete(canonical, call)
            _usage(record, completion.usage)
            rendered = fmt.render_completion(completion, canonical)
        elapsed = time.perf_counter() - started
        if record.output_tokens and elapsed > 0:
            record.tokens_per_s = record.output_tokens / elapsed
        return _json(rendered, provider, decision)

    async def _stream(self, request: web.Request, fmt: WireFormat, operation: Operation, provider: Provider,
                      call: CallContext, canonical: Any, decision: RouteDecision, record: RequestRecord,
                      started: float) -> web.StreamResponse:
        events: AsyncIterator[StreamEvent] = (provider.chat_stream(canonical, call) if operation == "chat"
                                              else provider.complete_stream(canonical, call))
        head = await _first_output(events)
        stats = StreamStats(started=started)
        guarded = guard_events(head, events, idle_timeout=self.settings.server.timeout, stats=stats)
        if operation == "chat":
            chunks = fmt.render_chat_stream(guarded, canonical)
        else:
            chunks = fmt.render_completion_stream(guarded, canonical)
        response = web.StreamResponse(status=200)
        response.content_type = fmt.stream_content_type
        response.headers["Cache-Control"] = "no-cache"
        _route_headers(response, provider.name, decision)
        request[keys.STREAM] = response
        _disarm_deadline(request)
        try:
            await write_stream(response, request, chunks)
        finally:
            _usage(record, stats.usage)
            record.ttft_ms = stats.ttft_ms
            if stats.error is not None:
                record.error_type = stats.error.kind
            if stats.first_token is not None and record.output_tokens:
                span = time.perf_counter() - stats.first_token
                record.tokens_per_s = record.output_tokens / span if span > 0 else None
        return response

    # -- models -------------------------------------------------------------------------------------

    async def _models(self, fmt: WireFormat, model_id: str | None = None) -> web.Response:
        """The model list, or one model by id (404 in the caller's format when nobody lists it)."""
        names = list(self.providers)
        results = await asyncio.gather(*(self.providers[n].list_models() for n in names), return_exceptions=True)
        seen: dict[str, ModelInfo] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("provider %s could not list its models: %s", name, result)
                continue
            for model in result:
                seen.setdefault(model.id, model)
        for router in self.routers:  # route aliases
            for model in router.list_models():
                seen.setdefault(model.id, model)
        if model_id is not None:
            if model_id not in seen:
                raise UnknownModelError(model_id, list(seen))
            return web.json_response(fmt.render_model(seen[model_id]))
        return web.json_response(fmt.render_models(list(seen.values())))


def _retryable(err: Exception, provider: str) -> ApiError | None:
    """The error to report if the next provider may fix ``err``, else None."""
    if isinstance(err, _Retry):
        return err.error
    if isinstance(err, ProviderError):
        return err if err.retryable else None
    if isinstance(err, (aiohttp.ClientConnectionError, ConnectionError)):
        return ProviderError(502, "upstream_unreachable", f"Provider '{provider}' is unreachable: {err}",
                             retryable=True)
    return None


async def _first_output(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    """Pull events up to the first one that is not ``StreamStart``, so a failure before any output can
    still be an ordinary error response (with fallback); raise a leading ``StreamError``."""
    head: list[StreamEvent] = []
    try:
        async for event in events:
            if isinstance(event, StreamError):
                info = event.error
                raise ProviderError(info.status, info.kind, info.message, retryable=info.status in
                                    RETRYABLE_STATUSES, retry_after=info.retry_after, code=info.code)
            head.append(event)
            if not isinstance(event, StreamStart):
                break
    except BaseException:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()
        raise
    return head


def _parse_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError as err:
        raise InvalidRequestError(f"The request body is not valid UTF-8: {err}") from err
    except json.JSONDecodeError as err:
        raise InvalidRequestError(f"The request body is not valid JSON: {err.msg} at line {err.lineno} column "
                                  f"{err.colno} (char {err.pos}).") from err
    if not isinstance(body, dict):
        raise InvalidRequestError(f"The request body must be a JSON object, not {type(body).__name__}.")
    return body


def _parse(fmt: WireFormat, operation: Operation, body: dict[str, Any], request: web.Request) -> Any:
    try:
        parsed: BaseModel
        if operation == "chat":
            parsed = fmt.parse_chat(body, request.headers)
        elif operation == "count_tokens":
            parsed = fmt.parse_count_tokens(body, request.headers)
        elif operation == "completion":
            parsed = fmt.parse_completion(body)
        elif operation == "embedding":
            parsed = fmt.parse_embedding(body)
        else:
            raise ApiError(404, "not_found", f"Unknown operation '{operation}'.")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequestError(f"Invalid request: {where}: {first['msg']}", param=where) from err
    except NotImplementedError as err:
        raise ApiError(404, "not_found", f"The {fmt.name} format does not support {operation} requests.") from err
    except ApiError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # Parsing sees nothing but client input: a shape the format did not anticipate is still a bad request.
        log.debug("format %s failed to parse a %s request", fmt.name, operation, exc_info=True)
        detail = f"missing field {err}" if isinstance(err, KeyError) else str(err) or type(err).__name__
        raise InvalidRequestError(f"Invalid request body: {detail}") from err
    return parsed


def _json(body: dict[str, Any], provider: Provider, decision: RouteDecision) -> web.Response:
    response = web.json_response(body)
    _route_headers(response, provider.name, decision)
    return response


def _route_headers(response: web.StreamResponse, provider: str, decision: RouteDecision) -> None:
    response.headers["x-higgs-provider"] = provider
    response.headers["x-higgs-route"] = decision.rule


def _usage(record: RequestRecord, usage: Usage) -> None:
    record.input_tokens = usage.input_tokens
    record.output_tokens = usage.output_tokens
    record.cached_tokens = usage.cached_tokens


def _disarm_deadline(request: web.Request) -> None:
    """Streams take over their own per-event deadline (``guard_events``) once output starts."""
    scope = request.get(keys.TIMEOUT)
    if scope is not None:
        scope.reschedule(None)
