"""Runtime contracts that carry traffic: ``Provider``, ``WireFormat``, ``Router``.

pluggy assembles these at startup; per-request work calls their methods directly.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from higgs.errors import ApiError
from higgs.messages import (
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorInfo,
    ModelInfo,
    StreamEvent,
    Usage,
)

if TYPE_CHECKING:
    from aiohttp import web

    from higgs.config import HiggsSettings
    from higgs.specs import ArchitectureSpec

Operation = Literal["chat", "completion", "embedding", "models", "count_tokens"]


# --------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteDecision:
    """Where a request goes.

    Attributes:
        providers: provider instance names to try in order (fallbacks after the first); ``higgs`` = local.
        model: the model name to send (after any rewrite).
        rule: a short explanation for the ``x-higgs-route`` header, e.g. ``local``, ``pattern:opus``,
            ``default``, ``auto:code``.
        method: which strategy decided (``auto``, ``local``, ``pattern``, ``default``).
    """

    providers: tuple[str, ...]
    model: str
    rule: str
    method: str


@dataclass
class RouteQuery:
    """What a router sees: the requested model and, for chat, the canonical request."""

    model: str
    operation: Operation
    request: ChatRequest | None = None


class Router(ABC):
    """A routing strategy; returns a decision or None to let the next strategy try."""

    name: str

    @abstractmethod
    async def route(self, query: RouteQuery) -> RouteDecision | None:
        """Decide where ``query`` goes, or return None."""

    def explain(self) -> list[str]:
        """Human-readable lines describing this strategy's rules (for ``higgs route``)."""
        return []

    def list_models(self) -> list[ModelInfo]:
        """Model names this strategy makes available itself (route aliases) for ``/v1/models``."""
        return []


# --------------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------------


@dataclass
class CallContext:
    """Per-request facts a provider may need.

    Attributes:
        request_id: the ``x-request-id`` of the client request.
        client_format: name of the wire format the client speaks.
        headers: the client's request headers (for forwarding credentials and versions).
        route: the routing decision being executed.
        path: the client's request path.
    """

    request_id: str
    client_format: str
    headers: Mapping[str, str]
    route: RouteDecision
    path: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class RawRequest:
    """A client request forwarded untouched (same format in and out), model already rewritten."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class RawResponse:
    """An upstream response streamed back byte for byte."""

    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]] | None = None
    #: Seconds after which ``body`` ends by itself (with the format's error bytes) when the upstream sends
    #: nothing, e.g. a read timeout on the upstream connection. When set, the kernel skips its own per-chunk
    #: idle watchdog (``server.timeout``), which costs a timer per chunk.
    read_timeout: float | None = None
    #: The whole body when the provider has already read it (not a stream): the kernel then answers with a
    #: ``Content-Length`` in one write instead of relaying chunks. ``body`` must yield the same bytes.
    content: bytes | None = None
    #: True once ``body`` has nothing left to yield (the upstream ended and every byte was handed on): the
    #: kernel then sends the chunk just received together with the end of the response, in one write.
    exhausted: Callable[[], bool] | None = None


@dataclass(frozen=True)
class UsageScan:
    """How to read token usage from a passed-through response without parsing all of it.

    The kernel looks for ``marker`` in the bytes as they pass; only the lines (SSE ``data:`` lines or NDJSON
    lines) that contain it are decoded as JSON and handed to ``read``, in order. A non-streamed JSON body is
    decoded whole and handed to ``read`` once.

    Attributes:
        marker: bytes that occur only in the events that carry usage, e.g. ``b'"prompt_tokens"'``.
        read: ``read(event, usage_so_far)`` -> the usage after this event (return ``usage_so_far`` unchanged
            when the event carries none).
    """

    marker: bytes
    read: Callable[[dict[str, Any], Usage], Usage]


@dataclass
class ProviderContext:
    """Shared services handed to provider factories."""

    settings: HiggsSettings
    formats: Mapping[str, WireFormat]
    architectures: Mapping[str, ArchitectureSpec]
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("higgs.provider"))


class Provider(ABC):
    """A backend that answers canonical requests: the local engine or a remote upstream.

    Streaming methods are async generators of ``StreamEvent``; the first event is ``StreamStart`` and the
    last is ``StreamFinish`` or ``StreamError``. Cancellation (a client disconnect) arrives as
    ``asyncio.CancelledError`` inside the generator and must stop the work behind it.
    Unsupported operations raise ``ApiError`` (the defaults below do).
    """

    name: str = ""
    #: The wire format spoken upstream, or None for local providers. Equal to the client's format, the
    #: kernel uses ``passthrough`` instead of translating.
    upstream_format: str | None = None
    local: bool = False

    async def start(self) -> None:
        """Open pools, load models. Called once at server startup."""

    async def close(self) -> None:
        """Release resources. Called once at shutdown."""

    async def list_models(self) -> list[ModelInfo]:
        """Models this provider offers for ``/v1/models``."""
        return []

    def serves(self, model: str) -> bool:
        """Whether ``model`` names something this provider serves by exact name (local models)."""
        return False

    async def chat(self, request: ChatRequest, call: CallContext) -> ChatResponse:
        """Answer a chat request in full."""
        raise self._unsupported("chat")

    def chat_stream(self, request: ChatRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        """Answer a chat request as a stream of events."""
        raise self._unsupported("streaming chat")

    async def complete(self, request: CompletionRequest, call: CallContext) -> CompletionResponse:
        """Answer a text completion in full."""
        raise self._unsupported("text completions")

    def complete_stream(self, request: CompletionRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        """Answer a text completion as a stream (``BlockDelta`` index = choice index)."""
        raise self._unsupported("streaming text completions")

    async def embed(self, request: EmbeddingRequest, call: CallContext) -> EmbeddingResponse:
        """Embed texts."""
        raise self._unsupported("embeddings")

    async def count_tokens(self, request: ChatRequest, call: CallContext) -> int:
        """Count the prompt tokens of a chat request."""
        raise self._unsupported("token counting")

    async def passthrough(self, raw: RawRequest, call: CallContext) -> RawResponse:
        """Forward a same-format request byte for byte."""
        raise self._unsupported("pass-through")

    def state(self) -> dict[str, Any]:
        """Live engine/pool state for ``/metrics`` (batch size, queue depth, cache bytes, ...)."""
        return {}

    def _unsupported(self, what: str) -> ApiError:
        return ApiError(400, "invalid_request", f"Provider '{self.name}' does not support {what}.",
                        code="unsupported_operation")


# --------------------------------------------------------------------------------------------------
# Wire formats
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormatRoute:
    """One HTTP route a format serves.

    Either ``operation`` (the kernel runs its standard parse -> route -> provider -> render pipeline) or
    ``handler`` (a custom aiohttp handler, for endpoints such as Ollama's ``/api/tags``).
    """

    method: str
    path: str
    operation: Operation | None = None
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None


@dataclass
class UpstreamCall:
    """An HTTP request a format builds for an upstream of its kind."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class WireFormat(ABC):
    """A wire format, both directions.

    Client side: parse requests, render responses/streams/errors. Upstream side: build requests for an
    upstream that speaks this format and parse its responses/streams/errors. Parse errors raise
    ``InvalidRequestError``. Stream rendering must be incremental (one output chunk per event, no
    buffering of the whole stream).
    """

    name: str
    #: ``Content-Type`` of this format's streams.
    stream_content_type: str = "text/event-stream"

    @abstractmethod
    def routes(self) -> list[FormatRoute]:
        """The HTTP routes this format serves."""

    @abstractmethod
    def claims(self, path: str) -> bool:
        """Whether errors on ``path`` (even unknown paths) are rendered in this format."""

    # -- client side ------------------------------------------------------------------------------
    def parse_chat(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """Parse a client chat request."""
        raise NotImplementedError

    def parse_count_tokens(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """Parse a client token-count request (like a chat request, but e.g. without ``max_tokens``)."""
        return self.parse_chat(body, headers)

    def render_chat(self, response: ChatResponse, request: ChatRequest) -> dict[str, Any]:
        """Render a full chat response."""
        raise NotImplementedError

    def render_chat_stream(self, events: AsyncIterator[StreamEvent], request: ChatRequest) -> AsyncIterator[bytes]:
        """Render canonical stream events as this format's stream bytes (errors included)."""
        raise NotImplementedError

    def parse_completion(self, body: dict[str, Any]) -> CompletionRequest:
        """Parse a text-completion request."""
        raise NotImplementedError

    def render_completion(self, response: CompletionResponse, request: CompletionRequest) -> dict[str, Any]:
        """Render a text-completion response."""
        raise NotImplementedError

    def render_completion_stream(
        self, events: AsyncIterator[StreamEvent], request: CompletionRequest
    ) -> AsyncIterator[bytes]:
        """Render a text-completion stream."""
        raise NotImplementedError

    def parse_embedding(self, body: dict[str, Any]) -> EmbeddingRequest:
        """Parse an embeddings request."""
        raise NotImplementedError

    def render_embedding(self, response: EmbeddingResponse, request: EmbeddingRequest) -> dict[str, Any]:
        """Render an embeddings response."""
        raise NotImplementedError

    def render_models(self, models: list[ModelInfo]) -> dict[str, Any]:
        """Render the model list."""
        raise NotImplementedError

    def render_model(self, model: ModelInfo) -> dict[str, Any]:
        """Render one model (``GET /v1/models/{model_id}``); only formats that route it implement this."""
        raise NotImplementedError

    def render_count_tokens(self, count: int) -> dict[str, Any]:
        """Render a token count."""
        raise NotImplementedError

    @abstractmethod
    def render_error(self, error: ErrorInfo) -> tuple[int, dict[str, Any]]:
        """Render an error as ``(status, body)`` in this format."""

    # -- upstream side ----------------------------------------------------------------------------
    def rewrite_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """Set the model in a same-format body before pass-through."""
        return {**body, "model": model}

    def build_upstream_chat(self, request: ChatRequest, *, default_max_tokens: int | None = None) -> UpstreamCall:
        """Build an upstream chat request from a canonical one (untranslatable fields dropped, logged).

        ``default_max_tokens`` (the provider's setting) fills ``max_tokens`` when the client gave none and
        the upstream format requires it.
        """
        raise NotImplementedError

    def parse_upstream_chat(self, body: dict[str, Any]) -> ChatResponse:
        """Parse an upstream's full chat response."""
        raise NotImplementedError

    def parse_upstream_chat_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
        """Parse an upstream's stream bytes into canonical events, incrementally."""
        raise NotImplementedError

    def build_upstream_count_tokens(self, request: ChatRequest) -> UpstreamCall:
        """Build an upstream token-count request (formats without one raise ``ApiError``)."""
        raise NotImplementedError

    def parse_upstream_count_tokens(self, body: dict[str, Any]) -> int:
        """Parse an upstream token-count response."""
        raise NotImplementedError

    def build_upstream_completion(self, request: CompletionRequest) -> UpstreamCall:
        """Build an upstream text-completion request (formats without one raise ``ApiError``)."""
        raise NotImplementedError

    def parse_upstream_completion(self, body: dict[str, Any]) -> CompletionResponse:
        """Parse an upstream's full text-completion response."""
        raise NotImplementedError

    def parse_upstream_completion_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
        """Parse an upstream's text-completion stream (``BlockDelta`` index = choice index)."""
        raise NotImplementedError

    def build_upstream_embedding(self, request: EmbeddingRequest) -> UpstreamCall:
        """Build an upstream embeddings request (formats without one raise ``ApiError``)."""
        raise NotImplementedError

    def parse_upstream_embedding(self, body: dict[str, Any]) -> EmbeddingResponse:
        """Parse an upstream's embeddings response."""
        raise NotImplementedError

    @abstractmethod
    def parse_upstream_error(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ErrorInfo:
        """Turn an upstream error response of this format into an ``ErrorInfo`` (``retry-after`` from headers)."""

    def usage_scan(self, operation: Operation) -> UsageScan | None:
        """How the kernel reads usage from passed-through ``operation`` responses of this format.

        None (the default) makes the kernel keep a copy of the response (up to 4 MiB) and parse it with
        ``parse_upstream_*`` after the last byte went out, which is correct but costs CPU per request.
        """
        return None

    def stream_error_bytes(self, error: ErrorInfo) -> bytes:
        """Bytes that end a passed-through stream of this format when the upstream fails mid-way.

        The default is an SSE ``data:`` event carrying ``render_error``'s body, which OpenAI-style clients
        raise as an API error; formats with named events or other framing (NDJSON) override it.
        """
        _, body = self.render_error(error)
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry ``api_key`` to an upstream of this format."""
        return {"authorization": f"Bearer {api_key}"}

    def client_credential(self, headers: Mapping[str, str]) -> str | None:
        """The API key a client sent (from ``Authorization: Bearer`` or ``x-api-key``)."""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        return headers.get("x-api-key") or None
