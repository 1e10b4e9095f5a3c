"""Upstream side: canonical requests -> ``POST /v1/responses`` bodies, and Responses answers -> canonical.

Used by a provider configured with ``format = "responses"``. Requests are stateless (``store: false``,
the whole conversation in ``input``); thinking blocks and stop sequences have no Responses counterpart
and are dropped with a debug log.
"""

from __future__ import annotations

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
)
from higgs.sse import iter_events
from higgs_format_responses.parse import FORMAT_NAME
from higgs_format_responses.tools import flat_name, log

_KINDS = {"invalid_request_error": "invalid_request", "authentication_error": "authentication",
          "permission_error": "permission", "not_found_error": "not_found", "rate_limit_error": "rate_limit",
          "insufficient_quota": "rate_limit", "server_error": "api_error", "overloaded_error": "overloaded"}
_STATUS_KINDS = {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found",
                 413: "request_too_large", 429: "rate_limit", 502: "upstream_unreachable", 503: "overloaded",
                 504: "timeout"}


def _image_part(block: ImageBlock) -> dict[str, Any]:
    url = block.url or f"data:{block.media_type or 'image/png'};base64,{block.data or ''}"
    part: dict[str, Any] = {"type": "input_image", "image_url": url}
    part["detail"] = block.detail or "auto"
    return part


def _user_items(blocks: list[ContentBlock]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []

    def flush() -> None:
        if parts:
            items.append({"type": "message", "role": "user", "content": list(parts)})
            parts.clear()

    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append({"type": "input_text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, ToolResultBlock):
            flush()
            output: str | list[dict[str, Any]]
            if all(isinstance(b, TextBlock) for b in block.content):
                output = "".join(b.text for b in block.content if isinstance(b, TextBlock))
            else:
                output = [{"type": "input_text", "text": b.text} if isinstance(b, TextBlock) else _image_part(b)
                          for b in block.content]
            if block.is_error and isinstance(output, str):
                output = f"Error: {output}"
            items.append({"type": "function_call_output", "call_id": block.tool_use_id, "output": output})
        else:
            log.debug("dropping %s block toward responses: no counterpart in a user turn", block.type)
    flush()
    return items


def _assistant_items(blocks: list[ContentBlock]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            if items and items[-1].get("type") == "message":
                items[-1]["content"].append({"type": "output_text", "text": block.text})
            else:
                items.append({"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": block.text}]})
        elif isinstance(block, ToolUseBlock):
            items.append({"type": "function_call", "call_id": block.id, "name": block.name,
                          "arguments": json.dumps(block.input, ensure_ascii=False, separators=(",", ":"))})
        else:
            # Reasoning items must be OpenAI's own (ids, encrypted content); another model's thinking cannot be.
            log.debug("dropping %s block toward responses", block.type)
    return items


def _effort(request: ChatRequest) -> str | None:
    reasoning = request.reasoning
    if reasoning is None or reasoning.enabled is False:
        return None
    if reasoning.effort:
        return reasoning.effort
    if reasoning.budget_tokens is not None:
        budget = reasoning.budget_tokens
        return "low" if budget < 2048 else "medium" if budget < 8192 else "high"
    return None


def build_request(request: ChatRequest) -> dict[str, Any]:
    """The ``/v1/responses`` body for a canonical request."""
    items: list[dict[str, Any]] = []
    for message in request.messages:
        items += _user_items(message.content) if message.role == "user" else _assistant_items(message.content)
    body: dict[str, Any] = {"model": request.model, "input": items, "store": False}
    if request.source_format == FORMAT_NAME:
        body.update({k: v for k, v in request.extra.items() if not k.startswith("_")})
    if request.system:
        body["instructions"] = request.system_text()
    if request.tools:
        body["tools"] = [{"type": "function", "name": t.name, "description": t.description or "",
                          "parameters": t.input_schema, **({"strict": t.extra["strict"]}
                                                           if isinstance(t.extra.get("strict"), bool) else {})}
                         for t in request.tools]
    choice = request.tool_choice
    if choice is not None:
        mapping = {"auto": "auto", "none": "none", "any": "required"}
        body["tool_choice"] = mapping.get(choice.type) or {"type": "function", "name": choice.name}
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    sampling = request.sampling
    if sampling.temperature is not None:
        body["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        body["top_p"] = sampling.top_p
    if sampling.top_logprobs is not None:
        body["top_logprobs"] = sampling.top_logprobs
    if request.stop:
        log.debug("dropping stop sequences toward responses: no counterpart")
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        body["text"] = {"format": {"type": "json_object"}}
    elif fmt is not None and fmt.type == "json_schema":
        spec: dict[str, Any] = {"type": "json_schema", "name": fmt.name or "response", "schema": fmt.json_schema}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        body["text"] = {"format": spec}
    if (effort := _effort(request)) is not None:
        body["reasoning"] = {"effort": effort}
    if request.user:
        body["user"] = request.user
    if request.stream:
        body["stream"] = True
    return body


def parse_usage(raw: Any) -> Usage:
    """Canonical usage from a Responses ``usage`` object (the pass-through usage scan reads it too)."""
    return _usage(raw)


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("input_tokens_details") or {}
    out_details = raw.get("output_tokens_details") or {}
    return Usage(input_tokens=int(raw.get("input_tokens") or 0), output_tokens=int(raw.get("output_tokens") or 0),
                 cached_tokens=int(details.get("cached_tokens") or 0),
                 reasoning_tokens=int(out_details.get("reasoning_tokens") or 0))


def _reasoning_text(item: dict[str, Any]) -> str:
    parts = item.get("content") or item.get("summary") or []
    return "\n\n".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("text"))


def _call_block(item: dict[str, Any]) -> ToolUseBlock:
    namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
    name = flat_name(namespace, str(item.get("name", "")))
    call_id = str(item.get("call_id") or item.get("id") or "")
    if item.get("type") == "custom_tool_call":
        return ToolUseBlock(id=call_id, name=name, input={"input": str(item.get("input", ""))})
    try:
        args = json.loads(item.get("arguments") or "{}")
    except ValueError:
        args = {}
    return ToolUseBlock(id=call_id, name=name, input=args if isinstance(args, dict) else {})


def _stop_reason(response: dict[str, Any], has_call: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return "refusal" if reason == "content_filter" else "max_tokens"
    return "tool_use" if has_call else "end_turn"


def parse_response(body: dict[str, Any]) -> ChatResponse:
    """A canonical response for a Responses object."""
    blocks: list[ContentBlock] = []
    for item in body.get("output") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") in ("output_text", "refusal"):
                    blocks.append(TextBlock(text=str(part.get("text") or part.get("refusal") or "")))
        elif kind in ("function_call", "custom_tool_call"):
            blocks.append(_call_block(item))
        elif kind == "reasoning" and (text := _reasoning_text(item)):
            blocks.append(ThinkingBlock(thinking=text))
    has_call = any(isinstance(b, ToolUseBlock) for b in blocks)
    extra = {"status": body["status"]} if body.get("status") not in (None, "completed") else {}
    return ChatResponse(id=str(body.get("id") or "resp"), model=str(body.get("model") or ""),
                        created=int(body.get("created_at") or 0), content=blocks,
                        stop_reason=_stop_reason(body, has_call),
                        usage=_usage(body.get("usage")), extra=extra)


def error_info(status: int, raw: Any) -> ErrorInfo:
    """An ``ErrorInfo`` for a Responses/OpenAI error object (or anything else)."""
    error = raw.get("error") if isinstance(raw, dict) else None
    if isinstance(error, dict):
        kind = _KINDS.get(str(error.get("type")), _STATUS_KINDS.get(status, "api_error"))
        if status in (401, 403, 404, 413, 429):  # the status is more precise than invalid_request_error
            kind = _STATUS_KINDS[status]
        if error.get("code") == "context_length_exceeded":
            kind = "context_length_exceeded"
        return ErrorInfo(status=status, kind=kind, message=str(error.get("message") or f"upstream status {status}"),
                         param=error.get("param"), code=error.get("code"))
    message = error if isinstance(error, str) else f"upstream status {status}"
    return ErrorInfo(status=status, kind=_STATUS_KINDS.get(status, "api_error"), message=message)


def parse_error(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ErrorInfo:
    """An ``ErrorInfo`` for an upstream error response."""
    try:
        raw = json.loads(body) if body else None
    except ValueError:
        raw = None
    info = error_info(status, raw)
    if raw is None and body:
        info.message = body.decode("utf-8", "replace")[:500]
    if headers:
        value = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        try:
            info.retry_after = float(value) if value is not None else None
        except ValueError:
            pass
    return info


class StreamParser:
    """Responses SSE events -> canonical stream events, keyed by output index."""

    def __init__(self) -> None:
        self.next_index = 0
        #: (output_index, part) -> canonical block index for open text/reasoning parts
        self.open: dict[tuple[int, int], int] = {}
        self.calls: dict[int, tuple[int, dict[str, Any], list[str]]] = {}
        self.started = False
        self.finished = False

    def _open(self, key: tuple[int, int], block: ContentBlock) -> list[StreamEvent]:
        index = self.next_index
        self.next_index += 1
        self.open[key] = index
        return [BlockStart(index=index, block=block)]

    def _close(self, output_index: int) -> list[StreamEvent]:
        keys = sorted(k for k in self.open if k[0] == output_index)
        return [BlockStop(index=self.open.pop(k)) for k in keys]

    def feed(self, data: dict[str, Any]) -> list[StreamEvent]:
        kind = data.get("type", "")
        out = data.get("output_index", 0)
        events: list[StreamEvent] = []
        if kind in ("response.created", "response.in_progress"):
            if not self.started:
                self.started = True
                response = data.get("response") or {}
                events.append(StreamStart(id=str(response.get("id") or "resp"), model=str(response.get("model") or ""),
                                          created=int(response.get("created_at") or 0)))
            return events
        if not self.started and kind != "error":
            self.started = True
            events.append(StreamStart(model=""))
        if kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") in ("function_call", "custom_tool_call"):
                block = _call_block({**item, "arguments": "{}", "input": ""})
                block.input = {}
                index = self.next_index
                self.next_index += 1
                self.calls[out] = (index, item, [])
                events.append(BlockStart(index=index, block=block))
        elif kind == "response.content_part.added":
            events += self._open((out, int(data.get("content_index", 0))), TextBlock(text=""))
        elif kind in ("response.output_text.delta", "response.refusal.delta"):
            key = (out, int(data.get("content_index", 0)))
            if key not in self.open:
                events += self._open(key, TextBlock(text=""))
            events.append(BlockDelta(index=self.open[key], delta=TextDelta(text=str(data.get("delta", "")))))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            key = (out, -1)
            if key not in self.open:
                events += self._open(key, ThinkingBlock(thinking=""))
            events.append(BlockDelta(index=self.open[key], delta=ThinkingDelta(thinking=str(data.get("delta", "")))))
        elif kind == "response.reasoning_summary_part.added" and int(data.get("summary_index", 0)) > 0 \
                and (out, -1) in self.open:
            # Summary parts after the first are separate paragraphs of one thinking block.
            events.append(BlockDelta(index=self.open[(out, -1)], delta=ThinkingDelta(thinking="\n\n")))
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            if out in self.calls:
                index, item, acc = self.calls[out]
                acc.append(str(data.get("delta", "")))
                if item.get("type") == "function_call":
                    events.append(BlockDelta(index=index, delta=ToolArgsDelta(partial_json=acc[-1])))
        elif kind == "response.output_item.done":
            events += self._item_done(out, data.get("item") or {})
        elif kind in ("response.completed", "response.incomplete"):
            response = data.get("response") or {}
            for key in list(self.open):
                events.append(BlockStop(index=self.open.pop(key)))
            has_call = any(isinstance(i, dict) and i.get("type") in ("function_call", "custom_tool_call")
                           for i in response.get("output") or [])
            events.append(StreamFinish(stop_reason=_stop_reason(response, has_call),
                                       usage=_usage(response.get("usage"))))
            self.finished = True
        elif kind == "response.failed":
            response = data.get("response") or {}
            events.append(StreamError(error=error_info(500, {"error": response.get("error") or {}})))
            self.finished = True
        elif kind == "error":
            nested = data.get("error")
            raw: dict[str, Any] = nested if isinstance(nested, dict) else data
            events.append(StreamError(error=ErrorInfo(status=500, kind="api_error",
                                                      message=str(raw.get("message") or "upstream stream error"),
                                                      code=raw.get("code"), param=raw.get("param"))))
            self.finished = True
        return events

    def _item_done(self, out: int, item: dict[str, Any]) -> list[StreamEvent]:
        if out not in self.calls:
            return self._close(out)
        index, started, acc = self.calls.pop(out)
        events: list[StreamEvent] = []
        if started.get("type") == "custom_tool_call":
            text = "".join(acc) or str(item.get("input", ""))
            events.append(BlockDelta(index=index, delta=ToolArgsDelta(partial_json=json.dumps({"input": text}))))
        elif not acc and item.get("arguments"):
            events.append(BlockDelta(index=index, delta=ToolArgsDelta(partial_json=str(item["arguments"]))))
        events.append(BlockStop(index=index))
        return events


async def parse_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
    """Canonical events for an upstream Responses SSE stream, as the bytes arrive."""
    parser = StreamParser()
    async for sse in iter_events(chunks):
        if sse.data.strip() == "[DONE]":
            continue
        try:
            data = sse.json()
        except ValueError:
            continue
        if isinstance(data, dict):
            if "type" not in data and sse.event != "message":
                data["type"] = sse.event
            if "error" in data and "type" not in data:
                data["type"] = "error"
            for event in parser.feed(data):
                yield event
        if parser.finished:
            return
