"""Upstream side: canonical requests -> Ollama ``/api/chat`` and ``/api/embed`` bodies, NDJSON answers -> canonical.

Used by a provider configured with ``format = "ollama"`` (e.g. ``[provider.ollama] kind = "ollama"``,
``format = "ollama"``) to reach Ollama's native API instead of its OpenAI-compatible one.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    ContentBlock,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorInfo,
    ImageBlock,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolArgsDelta,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    new_id,
)
from higgs_format_ollama.convert import FORMAT_NAME, log

_STOP = {"stop": "end_turn", "length": "max_tokens"}
_STATUS_KINDS = {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found",
                 413: "request_too_large", 429: "rate_limit", 500: "api_error", 502: "upstream_unreachable",
                 503: "overloaded", 504: "timeout"}


def _options(request: ChatRequest) -> dict[str, Any]:
    s = request.sampling
    options: dict[str, Any] = {}
    for key, value in (("temperature", s.temperature), ("top_p", s.top_p), ("top_k", s.top_k), ("min_p", s.min_p),
                       ("seed", s.seed), ("presence_penalty", s.presence_penalty),
                       ("frequency_penalty", s.frequency_penalty), ("repeat_penalty", s.repetition_penalty),
                       ("num_predict", request.max_tokens)):
        if value is not None:
            options[key] = value
    if request.stop:
        options["stop"] = list(request.stop)
    return options


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system_text()})
    names = {b.id: b.name for m in request.messages for b in m.content if isinstance(b, ToolUseBlock)}
    for message in request.messages:
        if message.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": message.text()}
            thinking = "".join(b.thinking for b in message.content if isinstance(b, ThinkingBlock))
            if thinking:
                entry["thinking"] = thinking
            # Ids ride along (Ollama ignores fields it does not know) so a higgs upstream keeps them exact.
            calls = [{"id": b.id, "function": {"name": b.name, "arguments": b.input}} for b in message.content
                     if isinstance(b, ToolUseBlock)]
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
            continue
        text: list[str] = []
        images: list[str] = []
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                result = "".join(b.text for b in block.content if isinstance(b, TextBlock))
                out.append({"role": "tool", "content": result, "tool_name": names.get(block.tool_use_id, ""),
                            "tool_call_id": block.tool_use_id})
            elif isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ImageBlock) and block.data:
                images.append(block.data)
            else:
                log.debug("dropping %s block toward ollama: no counterpart", block.type)
        if text or images:
            entry = {"role": "user", "content": "".join(text)}
            if images:
                entry["images"] = images
            out.append(entry)
    return out


def build_chat(request: ChatRequest) -> dict[str, Any]:
    """The ``/api/chat`` body for a canonical request."""
    body: dict[str, Any] = {"model": request.model, "messages": _messages(request), "stream": request.stream}
    if request.source_format == FORMAT_NAME:
        body.update({k: v for k, v in request.extra.items() if not k.startswith("_")})
    if request.tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                           "parameters": t.input_schema}} for t in request.tools]
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        body["format"] = "json"
    elif fmt is not None and fmt.type == "json_schema":
        body["format"] = fmt.json_schema
    if request.reasoning is not None and request.reasoning.enabled is not None:
        body["think"] = request.reasoning.effort or request.reasoning.enabled
    if options := _options(request):
        body["options"] = options
    return body


def _usage(body: Mapping[str, Any]) -> Usage:
    return Usage(input_tokens=int(body.get("prompt_eval_count") or 0), output_tokens=int(body.get("eval_count") or 0))


def _calls(message: Mapping[str, Any]) -> list[ToolUseBlock]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        args = function.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {}
        calls.append(ToolUseBlock(id=str(call.get("id") or new_id("call")), name=str(function.get("name", "")),
                                  input=args if isinstance(args, dict) else {}))
    return calls


def parse_chat(body: dict[str, Any]) -> ChatResponse:
    """A canonical response for a non-streamed ``/api/chat`` answer."""
    message = body.get("message") or {}
    blocks: list[ContentBlock] = []
    if message.get("thinking"):
        blocks.append(ThinkingBlock(thinking=str(message["thinking"])))
    if message.get("content"):
        blocks.append(TextBlock(text=str(message["content"])))
    calls = _calls(message)
    blocks.extend(calls)
    stop = "tool_use" if calls else _STOP.get(str(body.get("done_reason")), "end_turn")
    return ChatResponse(model=str(body.get("model") or ""), content=blocks, stop_reason=stop,
                        usage=_usage(body))


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """JSON objects from NDJSON bytes, whatever the chunking."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    async for chunk in chunks:
        buffer += decoder.decode(chunk)
        *complete, buffer = buffer.split("\n")
        for text in complete:
            if text.strip():
                yield json.loads(text)
    buffer += decoder.decode(b"", final=True)
    if buffer.strip():
        yield json.loads(buffer)


async def parse_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
    """Canonical events for an ``/api/chat`` NDJSON stream."""
    started = False
    open_kind: str | None = None
    index = -1
    saw_call = False
    async for body in iter_lines(chunks):
        if "error" in body:
            yield StreamError(error=ErrorInfo(status=500, kind="api_error", message=str(body["error"])))
            return
        if not started:
            started = True
            yield StreamStart(model=str(body.get("model") or ""))
        message = body.get("message") or {}
        for kind, text in (("thinking", message.get("thinking")), ("text", message.get("content"))):
            if not text:
                continue
            if open_kind != kind:
                if open_kind is not None:
                    yield BlockStop(index=index)
                index += 1
                open_kind = kind
                yield BlockStart(index=index, block=ThinkingBlock() if kind == "thinking" else TextBlock(text=""))
            delta = ThinkingDelta(thinking=text) if kind == "thinking" else TextDelta(text=text)
            yield BlockDelta(index=index, delta=delta)
        for call in _calls(message):
            if open_kind is not None:
                yield BlockStop(index=index)
                open_kind = None
            index += 1
            saw_call = True
            yield BlockStart(index=index, block=call.model_copy(update={"input": {}}))
            yield BlockDelta(index=index, delta=ToolArgsDelta(partial_json=json.dumps(call.input)))
            yield BlockStop(index=index)
        if body.get("done"):
            if open_kind is not None:
                yield BlockStop(index=index)
            stop = "tool_use" if saw_call else _STOP.get(str(body.get("done_reason")), "end_turn")
            yield StreamFinish(stop_reason=stop, usage=_usage(body))
            return


def build_embedding(request: EmbeddingRequest) -> dict[str, Any]:
    """The ``/api/embed`` body."""
    body: dict[str, Any] = {"model": request.model, "input": list(request.input)}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def parse_embedding(body: dict[str, Any]) -> EmbeddingResponse:
    """A canonical embeddings response for an ``/api/embed`` answer."""
    return EmbeddingResponse(model=str(body.get("model") or ""), data=body.get("embeddings") or [],
                             usage=Usage(input_tokens=int(body.get("prompt_eval_count") or 0)))


def parse_error(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ErrorInfo:
    """An ``ErrorInfo`` for an Ollama error (``{"error": "..."}``)."""
    try:
        raw = json.loads(body) if body else {}
    except ValueError:
        raw = {}
    error = raw.get("error") if isinstance(raw, dict) else None
    if isinstance(error, dict):  # Ollama's OpenAI-compatible endpoints nest the error
        error = error.get("message")
    message = str(error) if error else (body.decode("utf-8", "replace")[:500] or f"upstream status {status}")
    kind = _STATUS_KINDS.get(status, "invalid_request" if 400 <= status < 500 else "api_error")
    return ErrorInfo(status=status, kind=kind, message=message)
