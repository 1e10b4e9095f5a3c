"""The OpenAI wire format: Chat Completions, legacy Completions, Embeddings and Models, both directions.

Registered through ``higgs_formats`` like any third-party format. Mapping decisions are in
``docs/translation.md``.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from array import array
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from typing import Any

from higgs.errors import ApiError, InvalidRequestError
from higgs.formats import _openai_chat as chat
from higgs.formats import _openai_response as answers
from higgs.formats import _openai_stream as streams
from higgs.formats._common import (
    KIND_STATUS,
    error_from_exception,
    error_text,
    expect_dict,
    invalid_as_400,
    iso_time,
    kind_for_status,
    opt_bool,
    opt_int,
    retry_after,
)
from higgs.hookspecs import hookimpl
from higgs.interfaces import FormatRoute, Operation, UpstreamCall, UsageScan, WireFormat
from higgs.messages import (
    BlockDelta,
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorInfo,
    ModelInfo,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamStart,
    TextDelta,
    Usage,
    new_id,
)
from higgs.specs import FormatSpec
from higgs.sse import encode_json, iter_events

NAME = "openai"

# canonical kind -> OpenAI error ``type``
KIND_TO_TYPE = {
    "invalid_request": "invalid_request_error",
    "context_length_exceeded": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "rate_limit": "rate_limit_error",
    "api_error": "server_error",
    "overloaded": "server_error",
    "upstream_unreachable": "server_error",
    "timeout": "timeout",
}
TYPE_TO_KIND = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "authentication",
    "permission_error": "permission",
    "permission_denied_error": "permission",
    "not_found_error": "not_found",
    "rate_limit_error": "rate_limit",
    "insufficient_quota": "rate_limit",
    "server_error": "api_error",
    "api_error": "api_error",
    "internal_server_error": "api_error",
    "timeout": "timeout",
    "overloaded_error": "overloaded",
    "service_unavailable_error": "overloaded",
}
COMPLETION_FIELDS = frozenset({
    "model", "prompt", "max_tokens", "stop", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "seed", "presence_penalty", "frequency_penalty", "logit_bias", "n", "echo", "stream", "stream_options", "user",
})
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def error_body(error: ErrorInfo) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` for ``error``."""
    code = error.code
    if code is None and error.kind in ("context_length_exceeded", "overloaded", "upstream_unreachable"):
        code = error.kind
    return {"error": {"message": error.message, "type": KIND_TO_TYPE.get(error.kind, "server_error"),
                      "param": error.param, "code": code}}


def error_info_from_body(data: Any, status: int | None) -> ErrorInfo:
    """Canonical error from an OpenAI-style error body (also FastAPI ``detail`` and bare strings)."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        detail = data.get("detail") or data.get("message") if isinstance(data, dict) else None
        err = {"message": detail if isinstance(detail, str) else json.dumps(detail or data)[:500]}
    kind = TYPE_TO_KIND.get(str(err.get("type") or ""))
    code = err.get("code")
    code = str(code) if code is not None else None
    if code == "context_length_exceeded":
        kind = "context_length_exceeded"
    if kind is None or (kind == "invalid_request" and status and status not in (400, 422)):
        kind = kind_for_status(status) if status else "api_error"  # e.g. OpenAI's 401 invalid_api_key
    if status is None:
        status = KIND_STATUS.get(kind, 500)
    param = err.get("param")
    return ErrorInfo(status=status, kind=kind, message=str(err.get("message") or f"upstream status {status}"),
                     param=param if isinstance(param, str) else None, code=code)


def _prompt(value: Any) -> list[str] | list[list[int]]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):  # expect_list would say only "must be an array"
        raise InvalidRequestError("'prompt' must be a string, an array of strings, or token-id arrays.",
                                  param="prompt")
    items = value
    if not items:
        raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
    if all(isinstance(p, str) for p in items):
        return items
    if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        return [items]
    if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
           for p in items):
        return items
    raise InvalidRequestError("'prompt' must be a string, an array of strings, or token-id arrays.",
                              param="prompt")


def _pack_base64(vector: list[float]) -> str:
    floats = array("f", vector)
    if sys.byteorder != "little":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode()


def _unpack_base64(text: str) -> list[float]:
    floats = array("f")
    floats.frombytes(base64.b64decode(text))
    if sys.byteorder != "little":
        floats.byteswap()
    return floats.tolist()


def _fit_dimensions(vector: list[float], dimensions: int | None) -> list[float]:
    """Truncate to ``dimensions`` and re-normalise (what OpenAI does for its Matryoshka models)."""
    if dimensions is None or len(vector) <= dimensions:
        return vector
    cut = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in cut))
    return [x / norm for x in cut] if norm else cut


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class OpenAIFormat(WireFormat):
    """The OpenAI HTTP API (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``)."""

    name = NAME

    def routes(self) -> list[FormatRoute]:
        """Routes served for OpenAI clients."""
        return [
            FormatRoute("POST", "/v1/chat/completions", operation="chat"),
            FormatRoute("POST", "/v1/completions", operation="completion"),
            FormatRoute("POST", "/v1/embeddings", operation="embedding"),
            FormatRoute("GET", "/v1/models", operation="models"),
            FormatRoute("GET", "/v1/models/{model_id:.+}", operation="models"),
        ]

    def claims(self, path: str) -> bool:
        """Every path except Anthropic's ``/v1/messages`` family renders errors the OpenAI way."""
        return not (path == "/v1/messages" or path.startswith("/v1/messages/"))

    # -- client side ------------------------------------------------------------------------------
    def parse_chat(self, body: dict[str, Any], headers: Mapping[str, str]) -> ChatRequest:
        """Parse a ``/v1/chat/completions`` body."""
        with invalid_as_400("request"):
            return chat.parse_request(expect_dict(body, "body"))

    def render_chat(self, response: ChatResponse, request: ChatRequest) -> dict[str, Any]:
        """A ``chat.completion`` object."""
        rendered = answers.render_response(response)
        if not rendered["model"]:
            rendered["model"] = request.model
        return rendered

    def render_chat_stream(self, events: AsyncIterator[StreamEvent], request: ChatRequest) -> AsyncIterator[bytes]:
        """``chat.completion.chunk`` SSE, a usage chunk when asked, then ``data: [DONE]``."""
        return streams.render_stream(events, include_usage=request.include_usage,
                                     render_error=lambda e: self.render_error(e)[1], fallback_model=request.model)

    def parse_completion(self, body: dict[str, Any]) -> CompletionRequest:
        """Parse a ``/v1/completions`` body."""
        with invalid_as_400("request"):
            return self._parse_completion(body)

    def _parse_completion(self, body: dict[str, Any]) -> CompletionRequest:
        body = expect_dict(body, "body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("'model' is required and must be a string.", param="model")
        if "prompt" not in body:
            raise InvalidRequestError("'prompt' is required.", param="prompt")
        stream_options = expect_dict(body.get("stream_options") or {}, "stream_options")
        return CompletionRequest(
            model=model,
            prompt=_prompt(body["prompt"]),
            max_tokens=opt_int(body, "max_tokens", minimum=0),
            stop=chat._parse_stop(body.get("stop")),
            sampling=chat._parse_sampling({k: v for k, v in body.items() if k != "logprobs"}),
            n=opt_int(body, "n", minimum=1) or 1,
            echo=opt_bool(body, "echo"),
            stream=opt_bool(body, "stream"),
            include_usage=opt_bool(stream_options, "include_usage", prefix="stream_options."),
            user=body.get("user") if isinstance(body.get("user"), str) else None,
            extra={k: v for k, v in body.items() if k not in COMPLETION_FIELDS},
        )

    def render_completion(self, response: CompletionResponse, request: CompletionRequest) -> dict[str, Any]:
        """A ``text_completion`` object."""
        usage = answers.usage_json(response.usage)
        return {
            "id": response.id,
            "object": "text_completion",
            "created": response.created,
            "model": response.model or request.model,
            "choices": [{"text": c.text, "index": c.index, "logprobs": None,
                         "finish_reason": answers.finish_reason(c.stop_reason)} for c in response.choices],
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        }

    async def render_completion_stream(
        self, events: AsyncIterator[StreamEvent], request: CompletionRequest
    ) -> AsyncIterator[bytes]:
        """``text_completion`` chunks (``BlockDelta`` index = choice index), then ``data: [DONE]``."""
        chunk_id, model, created = new_id("cmpl"), request.model, 0
        finished = False

        def chunk(index: int, text: str, finish: str | None) -> bytes:
            return encode_json({"id": chunk_id, "object": "text_completion", "created": created, "model": model,
                                "choices": [{"text": text, "index": index, "logprobs": None,
                                             "finish_reason": finish}]})

        try:
            async for event in events:
                if finished:
                    continue  # drain, so the provider's generator ends by itself and runs its cleanup
                if isinstance(event, StreamStart):
                    chunk_id, model, created = event.id, event.model or request.model, event.created
                elif isinstance(event, BlockDelta) and isinstance(event.delta, TextDelta):
                    yield chunk(event.index, event.delta.text, None)
                elif isinstance(event, StreamFinish):
                    finished = True
                    for index in range(request.n):
                        yield chunk(index, "", answers.finish_reason(event.stop_reason))
                    if request.include_usage:
                        usage = answers.usage_json(event.usage)
                        yield encode_json({"id": chunk_id, "object": "text_completion", "created": created,
                                           "model": model, "choices": [],
                                           "usage": {k: usage[k] for k in
                                                     ("prompt_tokens", "completion_tokens", "total_tokens")}})
                    yield streams.DONE
                elif isinstance(event, StreamError):
                    finished = True
                    yield encode_json(self.render_error(event.error)[1])
                    yield streams.DONE
        except Exception as err:
            if finished:
                return
            finished = True
            yield encode_json(self.render_error(error_from_exception(err))[1])
            yield streams.DONE
        if not finished:
            yield encode_json(self.render_error(ErrorInfo(status=502, kind="api_error",
                                                          message="The stream ended before it finished."))[1])
            yield streams.DONE

    def parse_embedding(self, body: dict[str, Any]) -> EmbeddingRequest:
        """Parse a ``/v1/embeddings`` body."""
        with invalid_as_400("request"):
            return self._parse_embedding(body)

    def _parse_embedding(self, body: dict[str, Any]) -> EmbeddingRequest:
        body = expect_dict(body, "body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("'model' is required and must be a string.", param="model")
        if "input" not in body:
            raise InvalidRequestError("'input' is required.", param="input")
        try:
            inputs = _prompt(body["input"])
        except InvalidRequestError as err:
            raise InvalidRequestError(str(err).replace("'prompt'", "'input'"), param="input") from err
        if any(isinstance(s, str) and not s for s in inputs):
            raise InvalidRequestError("'input' must not contain empty strings.", param="input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InvalidRequestError("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
        return EmbeddingRequest(
            model=model,
            input=inputs,
            encoding_format=encoding,
            dimensions=opt_int(body, "dimensions", minimum=1),
            user=body.get("user") if isinstance(body.get("user"), str) else None,
            extra={k: v for k, v in body.items() if k not in EMBEDDING_FIELDS},
        )

    def render_embedding(self, response: EmbeddingResponse, request: EmbeddingRequest) -> dict[str, Any]:
        """An embeddings ``list``; ``base64`` packs little-endian float32."""
        data = []
        for i, vector in enumerate(response.data):
            vector = _fit_dimensions(vector, request.dimensions)
            embedding: Any = _pack_base64(vector) if request.encoding_format == "base64" else vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return {"object": "list", "data": data, "model": response.model or request.model,
                "usage": {"prompt_tokens": response.usage.input_tokens, "total_tokens": response.usage.input_tokens}}

    def render_models(self, models: list[ModelInfo]) -> dict[str, Any]:
        """``{"object": "list", "data": [...]}``, also readable by Anthropic clients.

        ``GET /v1/models`` is one route for both SDKs, so each entry carries OpenAI's fields (``object``,
        ``created``, ``owned_by``) and Anthropic's (``type``, ``display_name``, ``created_at``), and the page
        has Anthropic's ``has_more``/``first_id``/``last_id``. Extra fields are ignored by both.
        """
        data = [self.render_model(m) for m in models]
        return {"object": "list", "data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    def render_model(self, model: ModelInfo) -> dict[str, Any]:
        """One model object, readable by both SDKs (``GET /v1/models/{model_id}``)."""
        return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by,
                "type": "model", "display_name": model.id, "created_at": iso_time(model.created),
                "lifecycle": "active", "max_input_tokens": model.context_length}

    def render_count_tokens(self, count: int) -> dict[str, Any]:
        """OpenAI has no counting endpoint; higgs answers in Anthropic's shape."""
        return {"input_tokens": count}

    def render_error(self, error: ErrorInfo) -> tuple[int, dict[str, Any]]:
        """``(status, {"error": {...}})``; Anthropic's 529 overloaded becomes 503, which OpenAI clients retry."""
        status = 503 if error.status == 529 else error.status
        return status, error_body(error)

    # -- upstream side ----------------------------------------------------------------------------
    def build_upstream_chat(self, request: ChatRequest, *, default_max_tokens: int | None = None) -> UpstreamCall:
        """``POST /v1/chat/completions`` for ``request`` (streams ask for usage)."""
        return UpstreamCall(path="/v1/chat/completions", body=chat.build_body(request, default_max_tokens))

    def parse_upstream_chat(self, body: dict[str, Any]) -> ChatResponse:
        """Canonical response from a ``chat.completion`` body."""
        if not isinstance(body, dict):
            raise ValueError("unreadable upstream response: not a JSON object")
        try:
            return answers.parse_response(body)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"unreadable upstream response: {err}") from err

    def parse_upstream_chat_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
        """Canonical events from a chat stream, incrementally."""
        return streams.parse_stream(chunks)

    def build_upstream_count_tokens(self, request: ChatRequest) -> UpstreamCall:
        """OpenAI has no token-counting endpoint."""
        raise ApiError(400, "invalid_request", "OpenAI upstreams cannot count tokens.", code="unsupported_operation")

    def parse_upstream_count_tokens(self, body: dict[str, Any]) -> int:
        """Accepts ``{"input_tokens": N}`` from OpenAI-compatible servers that offer counting (e.g. higgs)."""
        return int(body["input_tokens"])

    def build_upstream_completion(self, request: CompletionRequest) -> UpstreamCall:
        """``POST /v1/completions``."""
        body: dict[str, Any] = {"model": request.model,
                                "prompt": request.prompt[0] if len(request.prompt) == 1 else request.prompt}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = request.stop
        chat._build_sampling(body, request.sampling, same=True)
        body.pop("top_logprobs", None)
        body.pop("logprobs", None)
        if request.n != 1:
            body["n"] = request.n
        if request.echo:
            body["echo"] = True
        if request.user:
            body["user"] = request.user
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update({k: v for k, v in request.extra.items() if k not in body})
        return UpstreamCall(path="/v1/completions", body=body)

    def parse_upstream_completion(self, body: dict[str, Any]) -> CompletionResponse:
        """Canonical completion from a ``text_completion`` body."""
        try:
            return self._parse_completion_body(body)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"unreadable upstream response: {err}") from err

    def _parse_completion_body(self, body: dict[str, Any]) -> CompletionResponse:
        stops = answers.FINISH_TO_STOP
        choices = [CompletionChoice(index=int(c.get("index", i)), text=str(c.get("text") or ""),
                                    stop_reason=stops.get(c.get("finish_reason") or "stop", "end_turn"))
                   for i, c in enumerate(body.get("choices") or [])]
        created = body.get("created")
        return CompletionResponse(id=str(body.get("id") or new_id("cmpl")), model=str(body.get("model") or ""),
                                  **({"created": created} if isinstance(created, int) else {}),
                                  choices=choices, usage=answers.parse_usage(body.get("usage")))

    async def parse_upstream_completion_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
        """Canonical events from a completion stream: one ``BlockDelta`` per text chunk, index = choice."""
        started, stop, usage = False, None, Usage()
        async with aclosing(iter_events(chunks)) as sse_events:
            async for sse in sse_events:
                if sse.data.strip() == "[DONE]":
                    break
                try:
                    data = json.loads(sse.data)
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                if "error" in data:
                    yield StreamError(error=error_info_from_body(data, None))
                    return
                if not started:
                    started = True
                    yield StreamStart(id=str(data.get("id") or new_id("cmpl")), model=str(data.get("model") or ""))
                if isinstance(data.get("usage"), dict):
                    usage = answers.parse_usage(data["usage"])
                for choice in data.get("choices") or []:
                    if not isinstance(choice, dict):
                        continue
                    if isinstance(choice.get("text"), str) and choice["text"]:
                        yield BlockDelta(index=_int(choice.get("index")), delta=TextDelta(text=choice["text"]))
                    if choice.get("finish_reason"):
                        stop = answers.FINISH_TO_STOP.get(str(choice["finish_reason"]), "end_turn")
            else:
                if stop is None:
                    yield StreamError(error=ErrorInfo(status=502, kind="api_error",
                                                      message="The upstream stream ended before it finished."))
                    return
        yield StreamFinish(stop_reason=stop or "end_turn", usage=usage)

    def build_upstream_embedding(self, request: EmbeddingRequest) -> UpstreamCall:
        """``POST /v1/embeddings``."""
        body: dict[str, Any] = {"model": request.model, "input": request.input,
                                "encoding_format": request.encoding_format}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user:
            body["user"] = request.user
        body.update({k: v for k, v in request.extra.items() if k not in body})
        return UpstreamCall(path="/v1/embeddings", body=body)

    def parse_upstream_embedding(self, body: dict[str, Any]) -> EmbeddingResponse:
        """Canonical embeddings (float or base64 vectors), in input order."""
        try:
            return self._parse_embedding_body(body)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"unreadable upstream response: {err}") from err

    def _parse_embedding_body(self, body: dict[str, Any]) -> EmbeddingResponse:
        items = sorted(body.get("data") or [], key=lambda d: int(d.get("index", 0)))
        data = [_unpack_base64(d["embedding"]) if isinstance(d.get("embedding"), str) else list(d["embedding"])
                for d in items]
        usage = body.get("usage") or {}
        return EmbeddingResponse(model=str(body.get("model") or ""), data=data,
                                 usage=Usage(input_tokens=int(usage.get("prompt_tokens") or 0)))

    def usage_scan(self, operation: Operation) -> UsageScan:
        """Usage is the ``usage`` object of a body or of the last stream chunk(s); with ``include_usage`` the
        other chunks say ``"usage": null``, so the marker is a key only a real usage object has."""
        return _USAGE_SCAN

    def parse_upstream_error(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ErrorInfo:
        """Canonical error from an upstream OpenAI-style error response."""
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {"error": {"message": error_text(body) or f"upstream status {status}"}}
        info = error_info_from_body(data, status)
        wait = retry_after(headers)
        return info.model_copy(update={"retry_after": wait}) if wait is not None else info


def _read_usage(event: dict[str, Any], usage: Usage) -> Usage:
    raw = event.get("usage")
    return answers.parse_usage(raw) if isinstance(raw, dict) else usage


_USAGE_SCAN = UsageScan(marker=b'"prompt_tokens"', read=_read_usage)


@hookimpl
def higgs_formats() -> Iterable[FormatSpec]:
    """Register the OpenAI wire format."""
    return [FormatSpec(name=NAME, factory=OpenAIFormat, description="OpenAI Chat Completions, Completions, "
                       "Embeddings and Models APIs")]
