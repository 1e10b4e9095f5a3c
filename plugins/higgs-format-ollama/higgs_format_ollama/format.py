"""``OllamaFormat``: Ollama's native API as a higgs wire format.

``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings`` run through the gateway pipeline
(so every route, local model and provider is reachable, and an upstream that speaks Ollama gets the body
untouched); ``/api/tags``, ``/api/show``, ``/api/ps`` and ``/api/version`` answer from the providers'
model lists.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from higgs.errors import ApiError, InvalidRequestError
from higgs.interfaces import FormatRoute, Operation, RouteQuery, UpstreamCall, UsageScan, WireFormat
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
from higgs_format_ollama import convert, upstream

#: The Ollama API version higgs answers to ``/api/version``: clients gate features (tools, thinking) on it.
OLLAMA_VERSION = "0.12.6"
_EPOCH = datetime.fromtimestamp(0, UTC)


def _iso(timestamp: int) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC) if timestamp else _EPOCH
    return moment.isoformat().replace("+00:00", "Z")


def _details(model: ModelInfo) -> dict[str, Any]:
    return {"parent_model": "", "format": "mlx" if model.kind == "local" else model.owned_by, "family": "",
            "families": None, "parameter_size": "", "quantization_level": ""}


def _entry(model: ModelInfo) -> dict[str, Any]:
    digest = hashlib.sha256(f"{model.owned_by}/{model.id}".encode()).hexdigest()
    return {"name": model.id, "model": model.id, "modified_at": _iso(model.created), "size": 0, "digest": digest,
            "details": _details(model)}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as err:
        raise InvalidRequestError(f"invalid JSON body: {err}") from err
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return body


class OllamaFormat(WireFormat):
    """The ``ollama`` wire format: ``/api/chat`` shapes, NDJSON streams, ``{"error": ...}`` errors."""

    name = convert.FORMAT_NAME
    stream_content_type = "application/x-ndjson"

    def __init__(self) -> None:
        self.generate = GenerateFormat()
        self.legacy_embed = LegacyEmbedFormat()

    def routes(self) -> list[FormatRoute]:
        """The native API routes (plus ``GET /``, which Ollama clients probe)."""
        return [
            FormatRoute("POST", "/api/chat", handler=self.handle_chat),
            FormatRoute("POST", "/api/generate", handler=self.handle_generate),
            FormatRoute("POST", "/api/embed", operation="embedding"),
            FormatRoute("POST", "/api/embeddings", handler=self.handle_legacy_embed),
            FormatRoute("GET", "/api/tags", handler=self.handle_tags),
            FormatRoute("POST", "/api/show", handler=self.handle_show),
            FormatRoute("GET", "/api/ps", handler=self.handle_ps),
            FormatRoute("GET", "/api/version", handler=self.handle_version),
            FormatRoute("GET", "/", handler=self.handle_root),
            FormatRoute("HEAD", "/", handler=self.handle_root),  # the ollama CLI's heartbeat
        ]

    def claims(self, path: str) -> bool:
        """Errors under ``/api/`` are Ollama errors."""
        return path == "/api" or path.startswith("/api/")

    # -- handlers -----------------------------------------------------------------------------------
    @staticmethod
    def _gateway(request: web.Request) -> Any:
        from higgs.server import keys

        return request.app[keys.GATEWAY]

    async def _load(self, request: web.Request, body: dict[str, Any], generate: bool) -> web.StreamResponse:
        """Ollama's "load the model" call (nothing to generate): check the model routes, answer ``done``."""
        model = convert.model_name(body)
        await self._gateway(request).route(RouteQuery(model=model, operation="chat"))
        answer: dict[str, Any] = {"model": body["model"], "created_at": convert.now_iso()}
        if generate:
            answer["response"] = ""
        else:
            answer["message"] = {"role": "assistant", "content": ""}
        answer.update({"done": True, "done_reason": "unload" if body.get("keep_alive") == 0 else "load"})
        return web.json_response(answer)

    async def _run(self, request: web.Request, fmt: WireFormat, operation: Operation) -> web.StreamResponse:
        return await self._gateway(request).run(request, fmt, operation)  # type: ignore[no-any-return]

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/chat``."""
        body = await _body(request)
        if not body.get("messages"):
            return await self._load(request, body, generate=False)
        return await self._run(request, self, "chat")

    async def handle_generate(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/generate``: templated (chat) by default, a raw text completion with ``raw: true``."""
        body = await _body(request)
        if not body.get("prompt") and not body.get("images"):
            return await self._load(request, body, generate=True)
        return await self._run(request, self.generate, "completion" if body.get("raw") is True else "chat")

    async def handle_legacy_embed(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/embeddings`` (the deprecated one-prompt form)."""
        return await self._run(request, self.legacy_embed, "embedding")

    async def _models(self, request: web.Request) -> list[tuple[ModelInfo, bool]]:
        providers = self._gateway(request).providers
        names = list(providers)
        results = await asyncio.gather(*(providers[n].list_models() for n in names), return_exceptions=True)
        seen: dict[str, tuple[ModelInfo, bool]] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                continue
            for model in result:
                seen.setdefault(model.id, (model, providers[name].local))
        return list(seen.values())

    async def handle_tags(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/tags``: every model higgs can serve."""
        return web.json_response({"models": [_entry(m) for m, _ in await self._models(request)]})

    async def handle_ps(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/ps``: the local models (the engine keeps them loaded while it runs)."""
        running = []
        for model, local in await self._models(request):
            if local:
                entry = _entry(model)
                entry.update({"expires_at": "2318-08-21T00:00:00Z", "size_vram": 0,
                              "context_length": model.context_length or 0})
                running.append(entry)
        return web.json_response({"models": running})

    async def handle_show(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/show``: what higgs knows about one model."""
        body = await _body(request)
        raw = body.get("model") or body.get("name")
        if not isinstance(raw, str) or not raw:
            raise InvalidRequestError("model is required", param="model")
        wanted = raw.removesuffix(":latest")
        found = next((m for m, _ in await self._models(request) if m.id in (raw, wanted)), None)
        if found is None:
            raise ApiError(404, "not_found", f"model '{raw}' not found")
        info: dict[str, Any] = {"general.architecture": "higgs", "general.name": found.id}
        if found.context_length:
            info["higgs.context_length"] = found.context_length
        return web.json_response({"modelfile": "", "parameters": "", "template": "", "license": "",
                                  "details": _details(found), "model_info": info,
                                  "capabilities": ["completion", "tools", "thinking"],
                                  "modified_at": _iso(found.created)})

    async def handle_version(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/version``."""
        return web.json_response({"version": OLLAMA_VERSION})

    async def handle_root(self, request: web.Request) -> web.StreamResponse:
        """``GET /``: Ollama's liveness answer, which clients probe before anything else."""
        return web.Response(text="Ollama is running")

    # -- client side --------------------------------------------------------------------------------
    def parse_chat(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """An ``/api/chat`` request."""
        return convert.parse_chat(body)

    def render_chat(self, response: ChatResponse, request: ChatRequest) -> dict[str, Any]:
        """An ``/api/chat`` answer."""
        return convert.render_chat(response, request)

    def render_chat_stream(self, events: AsyncIterator[StreamEvent], request: ChatRequest) -> AsyncIterator[bytes]:
        """``/api/chat`` NDJSON lines."""
        return convert.render_stream(events, request.model)

    def parse_embedding(self, body: dict[str, Any]) -> EmbeddingRequest:
        """An ``/api/embed`` request (``input`` is a string or an array of strings)."""
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidRequestError("input must be a string or a non-empty array of strings", param="input")
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            raise InvalidRequestError("dimensions must be a positive integer", param="dimensions")
        return EmbeddingRequest(model=convert.model_name(body), input=texts, dimensions=dims)

    def render_embedding(self, response: EmbeddingResponse, request: EmbeddingRequest) -> dict[str, Any]:
        """An ``/api/embed`` answer."""
        return {"model": request.model, "embeddings": response.data, "total_duration": 0, "load_duration": 0,
                "prompt_eval_count": response.usage.input_tokens}

    def render_models(self, models: list[ModelInfo]) -> dict[str, Any]:
        """``/api/tags`` shape."""
        return {"models": [_entry(m) for m in models]}

    def render_error(self, error: ErrorInfo) -> tuple[int, dict[str, Any]]:
        """``{"error": "message"}``, as Ollama answers."""
        return error.status, {"error": error.message}

    def stream_error_bytes(self, error: ErrorInfo) -> bytes:
        """An NDJSON ``{"error": "..."}`` line, which Ollama clients raise mid-stream."""
        return json.dumps({"error": error.message}).encode() + b"\n"

    def usage_scan(self, operation: Operation) -> UsageScan:
        """Counts sit in the final ``done`` line of a stream (or the body): ``prompt_eval_count``, ``eval_count``."""
        return _USAGE_SCAN

    # -- upstream side ------------------------------------------------------------------------------
    def build_upstream_chat(self, request: ChatRequest, *, default_max_tokens: int | None = None) -> UpstreamCall:
        """An ``/api/chat`` request for an Ollama upstream."""
        return UpstreamCall(path="/api/chat", body=upstream.build_chat(request))

    def parse_upstream_chat(self, body: dict[str, Any]) -> ChatResponse:
        """A canonical response for an ``/api/chat`` answer."""
        return upstream.parse_chat(body)

    def parse_upstream_chat_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
        """Canonical events for an ``/api/chat`` NDJSON stream."""
        return upstream.parse_stream(chunks)

    def build_upstream_embedding(self, request: EmbeddingRequest) -> UpstreamCall:
        """An ``/api/embed`` request."""
        return UpstreamCall(path="/api/embed", body=upstream.build_embedding(request))

    def parse_upstream_embedding(self, body: dict[str, Any]) -> EmbeddingResponse:
        """A canonical embeddings response."""
        return upstream.parse_embedding(body)

    def parse_upstream_error(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ErrorInfo:
        """An ``ErrorInfo`` for an Ollama error."""
        return upstream.parse_error(status, body, headers)


def _read_usage(event: dict[str, Any], usage: Usage) -> Usage:
    if "prompt_eval_count" not in event and "eval_count" not in event:
        return usage
    return Usage(input_tokens=int(event.get("prompt_eval_count") or 0), output_tokens=int(event.get("eval_count") or 0))


_USAGE_SCAN = UsageScan(marker=b'eval_count"', read=_read_usage)


class GenerateFormat(OllamaFormat):
    """``/api/generate`` shapes; same name, so an Ollama upstream still gets the body untouched."""

    def __init__(self) -> None:
        pass

    def parse_chat(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """A templated generate request (the prompt is the user turn)."""
        return convert.parse_generate(body)

    def render_chat(self, response: ChatResponse, request: ChatRequest) -> dict[str, Any]:
        """A generate answer (``response`` text)."""
        return convert.render_chat(response, request, generate=True)

    def render_chat_stream(self, events: AsyncIterator[StreamEvent], request: ChatRequest) -> AsyncIterator[bytes]:
        """Generate NDJSON lines."""
        return convert.render_stream(events, request.model, generate=True)

    def parse_completion(self, body: dict[str, Any]) -> CompletionRequest:
        """A raw generate request (no chat template)."""
        return convert.parse_raw_generate(body)

    def render_completion(self, response: CompletionResponse, request: CompletionRequest) -> dict[str, Any]:
        """A raw generate answer."""
        return convert.render_completion(response, request)

    def render_completion_stream(self, events: AsyncIterator[StreamEvent],
                                 request: CompletionRequest) -> AsyncIterator[bytes]:
        """Raw generate NDJSON lines."""
        return convert.render_stream(events, request.model, generate=True)


class LegacyEmbedFormat(OllamaFormat):
    """``/api/embeddings``: ``{"model", "prompt"}`` in, ``{"embedding": [...]}`` out."""

    def __init__(self) -> None:
        pass

    def parse_embedding(self, body: dict[str, Any]) -> EmbeddingRequest:
        """One prompt to embed."""
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidRequestError("prompt must be a string", param="prompt")
        return EmbeddingRequest(model=convert.model_name(body), input=[prompt])

    def render_embedding(self, response: EmbeddingResponse, request: EmbeddingRequest) -> dict[str, Any]:
        """The single vector."""
        return {"embedding": response.data[0] if response.data else []}
