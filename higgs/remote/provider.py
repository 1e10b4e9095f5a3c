"""``RemoteProvider``: a provider for any upstream that speaks a registered ``WireFormat``.

Same format in and out is a byte-for-byte pass-through (the kernel calls ``passthrough``); otherwise requests
are built and responses parsed by the upstream's format, through the canonical model, incrementally for
streams. One pooled ``aiohttp.ClientSession`` per provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar, TypeVar

import aiohttp
from multidict import CIMultiDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from higgs.config import LOCAL_PROVIDER, ProviderSettings
from higgs.errors import ApiError, ConfigError, ProviderError
from higgs.interfaces import (
    CallContext,
    Provider,
    ProviderContext,
    RawRequest,
    RawResponse,
    UpstreamCall,
    WireFormat,
)
from higgs.messages import (
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorInfo,
    ModelInfo,
    StreamError,
    StreamEvent,
    StreamFinish,
)
from higgs.remote.estimate import estimate_chat
from higgs.remote.headers import (
    REQUEST_DROP,
    RESPONSE_DROP,
    client_credential,
    client_credentials,
    filter_headers,
    parse_retry_after,
    redact,
)

_Req = TypeVar("_Req", ChatRequest, CompletionRequest, EmbeddingRequest)
_Resp = TypeVar("_Resp")

#: Statuses worth another attempt (here or at a fallback provider).
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504, 529})
#: Anthropic's ``overloaded_error`` status has no OpenAI equivalent; 503 is what OpenAI clients retry on.
STATUS_FOR_TRANSLATION = {529: 503}
FAILED_MODELS_TTL = 30.0
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})
_NETWORK_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
#: How events end, per streamed content type (pass-through holds back an unfinished one only).
_EVENT_ENDS: dict[str, tuple[bytes, ...]] = {
    "text/event-stream": (b"\n\n", b"\r\n\r\n", b"\r\r"),
    "application/x-ndjson": (b"\n",),
    "application/jsonl": (b"\n",),
}
#: Content types relayed chunk by chunk in pass-through (besides any body of unknown length).
STREAM_TYPES = frozenset(_EVENT_ENDS)
#: An unfinished event larger than this is relayed anyway (the stream is not framed as its type says).
_MAX_HELD = 1024 * 1024


class RemoteOptions(BaseModel):
    """Extra ``[provider.NAME]`` keys understood by every remote provider."""

    model_config = ConfigDict(extra="ignore")

    max_retries: int = Field(2, ge=0, le=10)
    retry_backoff: float = Field(0.5, ge=0)
    retry_max_wait: float = Field(20.0, ge=0)
    connect_timeout: float = Field(10.0, gt=0)
    max_connections: int = Field(256, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    models_ttl: float = Field(300.0, ge=0)
    trust_env: bool = False
    tls_verify: bool = True


class RemoteProvider(Provider):
    """A remote upstream reached over HTTP in the wire format named by ``[provider.NAME] format``.

    Subclasses (the provider plugins) set defaults: ``default_url``, ``default_headers`` (sent unless the
    client or the format sets them), ``strip_auth_default``, ``requires_max_tokens`` and ``models_path``.
    """

    kind: ClassVar[str] = "remote"
    default_url: ClassVar[str] = ""
    default_format: ClassVar[str] = "openai"
    default_headers: ClassVar[dict[str, str]] = {}
    strip_auth_default: ClassVar[bool] = False
    requires_max_tokens: ClassVar[bool] = False
    models_path: ClassVar[str] = "/v1/models"

    def __init__(self, settings: ProviderSettings, ctx: ProviderContext) -> None:
        self.name = settings.name
        if self.name == LOCAL_PROVIDER:
            raise ConfigError(f"[provider.{LOCAL_PROVIDER}]: the name '{LOCAL_PROVIDER}' means the local engine; "
                              "choose another name.")
        self.settings = settings
        fmt_name = settings.format if "format" in settings.model_fields_set else self.default_format
        if fmt_name not in ctx.formats:
            raise ConfigError(f"[provider.{self.name}] format {fmt_name!r} is not a registered wire format; "
                              f"available: {', '.join(sorted(ctx.formats)) or 'none'}.")
        self.format: WireFormat = ctx.formats[fmt_name]
        self.upstream_format = fmt_name
        self.formats = ctx.formats
        try:
            self.options = RemoteOptions.model_validate(settings.model_extra or {})
        except ValidationError as err:
            raise ConfigError(f"[provider.{self.name}]: {err}") from err
        url = settings.url or self.default_url
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"[provider.{self.name}] url must be an http(s) URL, got {url!r}.")
        self.base_url = url.rstrip("/")
        self.strip_auth = settings.strip_auth if "strip_auth" in settings.model_fields_set else self.strip_auth_default
        self.api_key = settings.api_key.get_secret_value() if settings.api_key else None
        server_key = ctx.settings.server.api_key
        self.gateway_key = server_key.get_secret_value() if server_key else None
        timeout = settings.timeout or ctx.settings.server.timeout
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(self.options.connect_timeout, timeout),
                                             sock_read=timeout)
        self.log = ctx.logger.getChild(self.name) if ctx.logger else logging.getLogger(f"higgs.provider.{self.name}")
        self._default_headers = tuple({**self.default_headers, **self.options.headers}.items())
        self.session: aiohttp.ClientSession | None = None
        self.in_flight = 0
        self.requests = 0
        self._models: tuple[float, list[ModelInfo]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the pooled HTTP session."""
        if self.session is None or self.session.closed:
            connector = aiohttp.TCPConnector(limit=self.options.max_connections, ttl_dns_cache=300,
                                             ssl=self.options.tls_verify)
            # No Accept-Encoding: upstreams answer uncompressed, so their bytes reach the client untouched; one
            # that compresses anyway is decoded (the gateway never sends content-encoding on).
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                 trust_env=self.options.trust_env,
                                                 skip_auto_headers=("Accept-Encoding", "User-Agent"))

    async def close(self) -> None:
        """Close the pooled HTTP session."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    def state(self) -> dict[str, Any]:
        """Pool state for ``/metrics`` and ``least_busy`` balancing."""
        return {"in_flight": self.in_flight, "requests": self.requests, "url": self.base_url,
                "format": self.upstream_format}

    # -- helpers -----------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        """``base_url`` + ``path``, tolerating a base that already ends in the path's ``/v1``."""
        if not path.startswith("/"):
            path = "/" + path
        if self.base_url.endswith("/v1") and (path.startswith("/v1/") or path == "/v1"):
            path = path[3:]
        return self.base_url + path

    def credential_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """Upstream auth: the configured key, nothing (strip_auth), or the client's own key re-issued.

        The gateway's own ``--api-key`` is a credential for higgs and is never forwarded.
        """
        if self.api_key:
            return self.format.auth_headers(self.api_key)
        if self.strip_auth:
            return {}
        # A client may authenticate to higgs with one header and to the upstream with the other.
        key = client_credential(client_headers, skip=self.gateway_key)
        return self.format.auth_headers(key) if key else {}

    def _secrets(self, client_headers: Mapping[str, str] | None = None) -> list[str | None]:
        return [self.api_key, self.gateway_key, *client_credentials(client_headers or {})]

    def _redact_body(self, body: bytes, client_headers: Mapping[str, str]) -> bytes:
        """An upstream error body with every key higgs knows of replaced by ``***`` (JSON-safe)."""
        text = body.decode("utf-8", "replace")
        redacted = redact(text, self._secrets(client_headers))
        return body if redacted == text else redacted.encode()

    def _headers(self, forwarded: list[tuple[str, str]], client_headers: Mapping[str, str],
                 extra: Mapping[str, str] | None = None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(forwarded)
        for key, value in (extra or {}).items():
            headers[key] = value
        for key, value in self.credential_headers(client_headers).items():
            # A format's auth headers may carry defaults (anthropic-version) the client's own value beats.
            if key.lower() in CREDENTIAL_HEADERS:
                headers[key] = value
            else:
                headers.setdefault(key, value)
        for key, value in self._default_headers:
            headers.setdefault(key, value)
        return headers

    def _has_fallback(self, call: CallContext | None) -> bool:
        """Whether the route has another provider after this one (then failing over beats retrying)."""
        if call is None or self.name not in call.route.providers:
            return False
        return call.route.providers.index(self.name) < len(call.route.providers) - 1

    async def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            await self.start()
        assert self.session is not None
        return self.session

    def _network_error(self, err: BaseException) -> ProviderError:
        if isinstance(err, asyncio.TimeoutError | TimeoutError):
            return ProviderError(504, "timeout", f"Provider '{self.name}' timed out.", retryable=True)
        return ProviderError(502, "upstream_unreachable",
                             f"Provider '{self.name}' could not be reached ({type(err).__name__}).", retryable=True)

    async def send(self, method: str, url: str, headers: CIMultiDict[str], body: bytes | None,
                   call: CallContext | None) -> aiohttp.ClientResponse:
        """Send a request with bounded retries (honouring ``retry-after``) when no fallback is left.

        Returns the final response (possibly an error status); raises ``ProviderError`` (retryable) when
        the upstream cannot be reached or times out on every attempt.
        """
        session = await self._session()
        attempts = 1 if self._has_fallback(call) else self.options.max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await session.request(method, url, headers=headers, data=body, timeout=self.timeout,
                                                 allow_redirects=False)
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                if last:
                    raise self._network_error(err) from err
                # The path only: a query string may carry a key.
                self.log.info("%s %s failed (%s); retrying", method, url.split("?", 1)[0], type(err).__name__)
                await asyncio.sleep(self.options.retry_backoff * 2**attempt)
                continue
            if response.status not in RETRYABLE or last:
                return response
            wait = parse_retry_after(response.headers)
            if wait is None:
                wait = self.options.retry_backoff * 2**attempt
            if wait > self.options.retry_max_wait:
                return response
            response.release()
            self.log.info("upstream answered %s; retrying in %.2fs", response.status, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def upstream_error(self, response: aiohttp.ClientResponse, call: CallContext | None,
                             body: bytes | None = None) -> ProviderError:
        """Turn an upstream error response into a ``ProviderError`` the client's format can render."""
        if body is None:
            try:
                body = await response.read()
            except (TimeoutError, *_NETWORK_ERRORS):
                body = b""
        try:
            info = self.format.parse_upstream_error(response.status, body)
        except Exception:  # a malformed error body must not hide the upstream's status
            info = ErrorInfo(status=response.status, kind="api_error",
                             message=body.decode("utf-8", "replace")[:500] or f"upstream status {response.status}")
        status = response.status
        if call is not None and call.client_format != self.upstream_format:
            status = STATUS_FOR_TRANSLATION.get(status, status)
        retry_after = parse_retry_after(response.headers)
        message = redact(info.message, self._secrets(call.headers if call else None))
        return ProviderError(status, info.kind, message, retryable=response.status in RETRYABLE,
                             retry_after=retry_after if retry_after is not None else info.retry_after, code=info.code)

    # -- translation -------------------------------------------------------------------------------
    def _prepare(self, request: ChatRequest, call: CallContext, stream: bool) -> ChatRequest:
        update: dict[str, Any] = {"stream": stream}
        if call.route.model and call.route.model != request.model:
            update["model"] = call.route.model
        if request.max_tokens is None and self.requires_max_tokens:
            update["max_tokens"] = self.settings.default_max_tokens
        if stream:
            update["include_usage"] = True
        return request.model_copy(update=update)

    async def _post_json(self, path: str, body: dict[str, Any], extra: Mapping[str, str],
                         call: CallContext) -> aiohttp.ClientResponse:
        forwarded = [("content-type", "application/json"), ("x-request-id", call.request_id)]
        headers = self._headers(forwarded, call.headers, extra)
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return await self.send("POST", self.url(path), headers, payload, call)

    async def chat(self, request: ChatRequest, call: CallContext) -> ChatResponse:
        """Translate a chat request to the upstream's format and its answer back."""
        upstream = self.format.build_upstream_chat(self._prepare(request, call, stream=False))
        return await self._request_json(upstream, self.format.parse_upstream_chat, call)

    def chat_stream(self, request: ChatRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        """Translate a streamed chat: upstream stream bytes -> canonical events, one chunk at a time."""
        upstream = self.format.build_upstream_chat(self._prepare(request, call, stream=True))
        return self._request_stream(upstream, self.format.parse_upstream_chat_stream, call)

    async def complete(self, request: CompletionRequest, call: CallContext) -> CompletionResponse:
        """Translate a text completion (for upstream formats that have one)."""
        upstream = self._build(self.format.build_upstream_completion, self._retarget(request, call, False),
                               "text completions")
        return await self._request_json(upstream, self.format.parse_upstream_completion, call)

    def complete_stream(self, request: CompletionRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        """Translate a streamed text completion."""
        upstream = self._build(self.format.build_upstream_completion, self._retarget(request, call, True),
                               "streaming text completions")
        return self._request_stream(upstream, self.format.parse_upstream_completion_stream, call)

    async def embed(self, request: EmbeddingRequest, call: CallContext) -> EmbeddingResponse:
        """Translate an embeddings request (for upstream formats that have one)."""
        upstream = self._build(self.format.build_upstream_embedding, self._retarget(request, call, None),
                               "embeddings")
        return await self._request_json(upstream, self.format.parse_upstream_embedding, call)

    def _retarget(self, request: _Req, call: CallContext, stream: bool | None) -> _Req:
        update: dict[str, Any] = {}
        if call.route.model and call.route.model != request.model:
            update["model"] = call.route.model
        if stream is not None:
            update["stream"] = stream
            update["include_usage"] = stream or getattr(request, "include_usage", False)
        return request.model_copy(update=update) if update else request

    def _build(self, builder: Callable[[_Req], UpstreamCall], request: _Req, what: str) -> UpstreamCall:
        try:
            return builder(request)
        except NotImplementedError as err:
            raise self._unsupported(what) from err

    async def _request_json(self, upstream: UpstreamCall, parse: Callable[[Any], _Resp], call: CallContext) -> _Resp:
        """POST ``upstream`` and parse the JSON answer; errors become ``ProviderError``."""
        self.in_flight += 1
        self.requests += 1
        try:
            response = await self._post_json(upstream.path, upstream.body, upstream.headers, call)
            async with response:
                try:
                    body = await response.read()
                except (TimeoutError, *_NETWORK_ERRORS) as err:
                    raise self._network_error(err) from err
                if response.status >= 400:
                    raise await self.upstream_error(response, call, body)
            try:
                return parse(json.loads(body))
            except (ValueError, ValidationError, ApiError, KeyError, TypeError) as err:
                raise ProviderError(502, "api_error", f"Provider '{self.name}' sent an unreadable response.",
                                    retryable=True) from err
        finally:
            self.in_flight -= 1

    async def _request_stream(self, upstream: UpstreamCall,
                              parse: Callable[[AsyncIterator[bytes]], AsyncIterator[StreamEvent]],
                              call: CallContext) -> AsyncIterator[StreamEvent]:
        """POST ``upstream`` and parse its stream incrementally; failures after the first event end the
        stream with a ``StreamError``, failures before it raise (so the gateway can fall back)."""
        self.in_flight += 1
        self.requests += 1
        response: aiohttp.ClientResponse | None = None
        finished = False
        try:
            response = await self._post_json(upstream.path, upstream.body, upstream.headers, call)
            if response.status >= 400:
                raise await self.upstream_error(response, call)
            sent_any = False
            ended = False
            try:
                async for event in parse(_chunks(response)):
                    ended = ended or isinstance(event, StreamFinish | StreamError)
                    sent_any = True
                    yield event
            except (TimeoutError, *_NETWORK_ERRORS, ValueError, ValidationError, ApiError) as err:
                error = (self._network_error(err) if isinstance(err, (TimeoutError, *_NETWORK_ERRORS)) else
                         ProviderError(502, "api_error", f"Provider '{self.name}' sent an unreadable stream.",
                                       retryable=True))
                if not sent_any:
                    raise error from err
                self.log.warning("upstream stream failed mid-way: %s", type(err).__name__)
                yield StreamError(error=error.info)
                ended = True
            if not ended:
                if not sent_any:
                    raise ProviderError(502, "api_error", f"Provider '{self.name}' sent an empty stream.",
                                        retryable=True)
                yield StreamError(error=ErrorInfo(status=502, kind="upstream_unreachable",
                                                  message=f"Provider '{self.name}' ended the stream early."))
            finished = True
        finally:
            self.in_flight -= 1
            if response is not None:
                # A stream cut short (client gone, error) must not go back to the pool half-read.
                response.release() if finished else response.close()

    async def count_tokens(self, request: ChatRequest, call: CallContext) -> int:
        """Count input tokens upstream, or estimate locally with ``stub_count_tokens``."""
        if self.settings.stub_count_tokens:
            return estimate_chat(request)
        try:
            upstream = self.format.build_upstream_count_tokens(self._prepare(request, call, stream=False))
        except (NotImplementedError, ApiError) as err:
            raise ApiError(404, "not_found", f"Provider '{self.name}' cannot count tokens; set "
                           f"stub_count_tokens = true in [provider.{self.name}] to estimate locally.",
                           code="unsupported_operation") from err
        response = await self._post_json(upstream.path, upstream.body, upstream.headers, call)
        async with response:
            body = await response.read()
            if response.status >= 400:
                raise await self.upstream_error(response, call, body)
        try:
            return self.format.parse_upstream_count_tokens(json.loads(body))
        except (ValueError, KeyError, TypeError) as err:
            raise ProviderError(502, "api_error", f"Provider '{self.name}' sent an unreadable token count.") from err

    # -- pass-through ------------------------------------------------------------------------------
    async def passthrough(self, raw: RawRequest, call: CallContext) -> RawResponse:
        """Forward a same-format request; the response body and stream bytes come back untouched."""
        if self.settings.stub_count_tokens and raw.path.rstrip("/").endswith("/count_tokens"):
            return self._local_count(raw, call)
        url = self.url(raw.path) + (f"?{raw.query}" if raw.query else "")
        client: Mapping[str, str] = CIMultiDict(raw.headers)
        if client_credential(client) is None:
            client = call.headers
        headers = self._headers(filter_headers(raw.headers, REQUEST_DROP), client)
        self.in_flight += 1
        self.requests += 1
        try:
            response = await self.send(raw.method, url, headers, raw.body, call)
        except BaseException:
            self.in_flight -= 1
            raise
        if response.status in RETRYABLE and self._has_fallback(call):
            self.in_flight -= 1
            error = await self.upstream_error(response, call)
            response.release()
            raise error
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        out_headers = filter_headers(raw_headers, RESPONSE_DROP)
        if not _is_stream(response):
            # Whole bodies are read before the first byte goes out, so a failure is still a clean 502.
            try:
                body = await response.read()
            except (TimeoutError, *_NETWORK_ERRORS) as err:
                raise self._network_error(err) from err
            finally:
                response.release()
                self.in_flight -= 1
            if response.status >= 400:  # upstreams sometimes echo the key they were sent
                body = self._redact_body(body, client)
            return RawResponse(response.status, out_headers, _once(body), content=body)
        return self._relay(response, out_headers)

    def _relay(self, response: aiohttp.ClientResponse, headers: list[tuple[str, str]]) -> RawResponse:
        """A streamed pass-through body plus a ``close`` that is safe whether or not the body was consumed.

        Chunks are handed on as the socket delivers them; a stall longer than the read timeout, or a broken
        connection, ends the body with the format's own error bytes (``WireFormat.stream_error_bytes``).
        """
        open_ = [True]
        held = [b""]  # an unfinished event, held back so an error event never lands in the middle of one

        def finish(clean: bool) -> None:
            if open_[0]:
                open_[0] = False
                self.in_flight -= 1
                # A stream cut short (client gone, error) must not go back to the pool half-read.
                response.release() if clean else response.close()

        async def body() -> AsyncIterator[bytes]:
            clean = False
            read = response.content.readany
            ends = _EVENT_ENDS.get(response.content_type)
            try:
                try:
                    while chunk := await read():
                        if ends is None or (not held[0] and chunk.endswith(ends)):
                            yield chunk  # the usual case: whole events
                            continue
                        data = held[0] + chunk
                        cut = max((at + len(end) for end in ends if (at := data.rfind(end)) >= 0), default=0)
                        if cut < len(data) and len(data) > _MAX_HELD:
                            cut = len(data)  # not event framing after all: stop holding
                        held[0] = data[cut:]
                        if cut:
                            yield data[:cut]
                    if held[0]:
                        rest, held[0] = held[0], b""
                        yield rest  # the last line of an NDJSON stream may lack its newline
                except (TimeoutError, *_NETWORK_ERRORS) as err:
                    self.log.warning("upstream stream of provider '%s' failed mid-way: %s", self.name,
                                     type(err).__name__)
                    if ends is None:  # error bytes cannot follow half a JSON body: end abruptly so the client can tell
                        raise self._network_error(err) from err
                    yield self.format.stream_error_bytes(self._network_error(err).info)
                clean = True
            finally:
                finish(clean)

        async def close() -> None:
            finish(False)

        def exhausted() -> bool:
            return response.content.at_eof() and not held[0]

        return RawResponse(response.status, headers, body(), close=close, read_timeout=self.timeout.sock_read,
                           exhausted=exhausted)

    def _local_count(self, raw: RawRequest, call: CallContext) -> RawResponse:
        try:
            body = json.loads(raw.body)
            request = self.format.parse_count_tokens(body, CIMultiDict(raw.headers))
        except ValueError as err:
            raise ApiError(400, "invalid_request", "The request body is not valid JSON.") from err
        payload = json.dumps(self.format.render_count_tokens(estimate_chat(request))).encode()
        return RawResponse(200, [("content-type", "application/json")], _once(payload))

    # -- models ------------------------------------------------------------------------------------
    async def list_models(self) -> list[ModelInfo]:
        """Configured ``models``, else the upstream's own list (cached ``models_ttl`` seconds)."""
        if self.settings.models:
            return [ModelInfo(id=m, owned_by=self.name) for m in self.settings.models]
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < self.options.models_ttl:
            return self._models[1]
        headers = self._headers([], {})
        try:
            session = await self._session()
            timeout = aiohttp.ClientTimeout(total=min(10.0, self.timeout.sock_read or 10.0))
            async with session.get(self.url(self.models_path), headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    raise ProviderError(response.status, "api_error", f"model list answered {response.status}")
                models = [ModelInfo(id=i, owned_by=self.name) for i in self.parse_models(await response.json())]
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, ProviderError) as err:
            self.log.warning("could not list models of provider '%s': %s", self.name, type(err).__name__)
            # Remember the failure briefly so /v1/models does not wait on a dead upstream every time.
            self._models = (now - self.options.models_ttl + FAILED_MODELS_TTL, [])
            return []
        self._models = (now, models)
        return models

    def parse_models(self, body: Any) -> list[str]:
        """Model ids from the upstream's model list (OpenAI and Anthropic shape: ``data[].id``)."""
        data = body.get("data", []) if isinstance(body, dict) else []
        return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in response.content.iter_any():
        yield chunk


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _is_stream(response: aiohttp.ClientResponse) -> bool:
    """Relay as it comes: event streams, NDJSON, and any body of unknown length (chunked or close-delimited)."""
    if response.content_type in STREAM_TYPES:
        return True
    return response.content_length is None and response.status not in (204, 304)

