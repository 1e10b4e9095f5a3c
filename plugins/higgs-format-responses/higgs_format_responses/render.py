"""Client side: canonical responses and stream events -> Responses objects and SSE events.

Each canonical block becomes one output item: text -> ``message`` (one ``output_text`` part), thinking ->
``reasoning`` (its text as a summary), tool_use -> ``function_call`` or ``custom_tool_call`` carrying the
name and namespace the client defined. Streams follow the documented event order, every event numbered by
``sequence_number``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    ContentBlock,
    ErrorInfo,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolArgsDelta,
    ToolUseBlock,
    Usage,
    new_id,
)
from higgs_format_responses.parse import echo_of, tool_map_of
from higgs_format_responses.tools import ToolMap, call_item_fields

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error", "context_length_exceeded": "invalid_request_error",
    "authentication": "authentication_error", "permission": "permission_error", "not_found": "invalid_request_error",
    "request_too_large": "invalid_request_error", "rate_limit": "rate_limit_error", "overloaded": "server_error",
    "timeout": "server_error", "upstream_unreachable": "server_error", "api_error": "server_error",
}


def new_response_id() -> str:
    """A fresh Responses id (``resp_...``).

    Never derived from the upstream's id: ``previous_response_id`` looks responses up by it, and upstreams
    (or test doubles) that reuse ids must not make two answers share one store entry.
    """
    return new_id("resp")


def render_usage(usage: Usage) -> dict[str, Any]:
    """The Responses ``usage`` object."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def error_object(info: ErrorInfo) -> dict[str, Any]:
    """The ``error`` object of an error body or a failed response."""
    return {"message": info.message, "type": _ERROR_TYPES.get(info.kind, "server_error"),
            "param": info.param, "code": info.code or info.kind}


def render_item(block: ContentBlock, tool_map: ToolMap, status: str = "completed") -> dict[str, Any] | None:
    """One output item for a canonical block, or None for blocks with no Responses counterpart."""
    if isinstance(block, TextBlock):
        return {"id": new_id("msg"), "type": "message", "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": block.text, "annotations": [], "logprobs": []}]}
    if isinstance(block, ThinkingBlock):
        item: dict[str, Any] = {"id": new_id("rs"), "type": "reasoning", "summary": []}
        if block.thinking:
            item["summary"] = [{"type": "summary_text", "text": block.thinking}]
        if block.redacted and block.data:
            item["encrypted_content"] = block.data
        return item
    if isinstance(block, ToolUseBlock):
        fields = call_item_fields(block.name, block.input, tool_map)
        prefix = "ctc" if fields["type"] == "custom_tool_call" else "fc"
        return {"id": new_id(prefix), "call_id": block.id, **fields, "status": status}
    return None


def response_object(request: ChatRequest, *, rid: str, created: int, model: str, status: str,
                    output: list[dict[str, Any]], usage: Usage | None, stop_reason: str | None = None,
                    error: ErrorInfo | None = None) -> dict[str, Any]:
    """A complete Responses ``response`` object, echoing the request's settings."""
    echo = echo_of(request)
    incomplete = None
    if status == "incomplete":
        incomplete = {"reason": "content_filter" if stop_reason == "refusal" else "max_output_tokens"}
    reasoning: dict[str, Any] = echo["reasoning"] if isinstance(echo.get("reasoning"), dict) else {}
    text: dict[str, Any] = echo["text"] if isinstance(echo.get("text"), dict) else {}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error_object(error) if error is not None else None,
        "incomplete_details": incomplete,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": echo.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": echo.get("store", True),
        "temperature": echo.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools", []),
        "top_p": echo.get("top_p", 1.0),
        "truncation": echo.get("truncation", "disabled"),
        "usage": render_usage(usage) if usage is not None else None,
        "user": echo.get("user"),
        "metadata": echo.get("metadata", {}),
    }


def _status(stop_reason: str | None) -> str:
    return "incomplete" if stop_reason in ("max_tokens", "refusal") else "completed"


def render_response(response: ChatResponse, request: ChatRequest) -> dict[str, Any]:
    """A full (non-streamed) Responses object."""
    tool_map = tool_map_of(request)
    output = [item for block in response.content if (item := render_item(block, tool_map)) is not None]
    return response_object(request, rid=new_response_id(), created=response.created, model=response.model,
                           status=_status(response.stop_reason), output=output, usage=response.usage,
                           stop_reason=response.stop_reason)


class StreamRenderer:
    """Turns canonical stream events into Responses SSE events, numbering each one.

    ``on_complete`` receives the final response object (for ``store``) when the stream ends.
    """

    def __init__(self, request: ChatRequest, on_complete: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.request = request
        self.tool_map = tool_map_of(request)
        self.on_complete = on_complete
        self.sequence = 0
        self.rid = new_response_id()
        self.created = int(time.time())
        self.model = request.model
        self.usage = Usage()
        self.output: list[dict[str, Any]] = []
        #: canonical block index -> (output index, item, accumulated text/arguments)
        self.open: dict[int, tuple[int, dict[str, Any], list[str]]] = {}
        #: canonical block index -> flat tool name, for tool-use blocks
        self.flat: dict[int, str] = {}
        self.started = False
        self.done = False

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def snapshot(self, status: str, usage: Usage | None = None, stop_reason: str | None = None,
                 error: ErrorInfo | None = None) -> dict[str, Any]:
        return response_object(self.request, rid=self.rid, created=self.created, model=self.model, status=status,
                               output=list(self.output), usage=usage, stop_reason=stop_reason, error=error)

    def start(self, event: StreamStart | None) -> list[bytes]:
        self.started = True
        if event is not None:
            self.created, self.model, self.usage = event.created, event.model or self.model, event.usage
        response = self.snapshot("in_progress")
        return [self.event("response.created", response=response),
                self.event("response.in_progress", response=response)]

    def block_start(self, event: BlockStart) -> list[bytes]:
        block = event.block
        item = render_item(block, self.tool_map, status="in_progress")
        if item is None:
            return []
        out_index = len(self.output)
        self.output.append(item)
        self.open[event.index] = (out_index, item, [])
        if item["type"] == "message":
            item["content"] = []
            return [self.event("response.output_item.added", output_index=out_index, item=item),
                    self.event("response.content_part.added", item_id=item["id"], output_index=out_index,
                               content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                      "logprobs": []})]
        if item["type"] == "reasoning":
            item["summary"] = []
            return [self.event("response.output_item.added", output_index=out_index, item=item),
                    self.event("response.reasoning_summary_part.added", item_id=item["id"],
                               output_index=out_index, summary_index=0, part={"type": "summary_text", "text": ""})]
        if isinstance(block, ToolUseBlock):
            self.flat[event.index] = block.name
        if item["type"] == "function_call":
            item["arguments"] = ""
        else:
            item["input"] = ""
        return [self.event("response.output_item.added", output_index=out_index, item=item)]

    def block_delta(self, event: BlockDelta) -> list[bytes]:
        if event.index not in self.open:
            return []
        out_index, item, acc = self.open[event.index]
        delta = event.delta
        if isinstance(delta, TextDelta) and item["type"] == "message":
            acc.append(delta.text)
            return [self.event("response.output_text.delta", item_id=item["id"], output_index=out_index,
                               content_index=0, delta=delta.text, logprobs=[])]
        if isinstance(delta, ThinkingDelta) and item["type"] == "reasoning":
            acc.append(delta.thinking)
            return [self.event("response.reasoning_summary_text.delta", item_id=item["id"], output_index=out_index,
                               summary_index=0, delta=delta.thinking)]
        if isinstance(delta, ToolArgsDelta):
            acc.append(delta.partial_json)
            if item["type"] == "function_call":
                return [self.event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=out_index, delta=delta.partial_json)]
        # Custom tool input is JSON-wrapped upstream; it is unwrapped and sent whole at block stop.
        return []

    def block_stop(self, event: BlockStop) -> list[bytes]:
        if event.index not in self.open:
            return []
        out_index, item, acc = self.open.pop(event.index)
        text = "".join(acc)
        item["status"] = "completed"
        events: list[bytes] = []
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            events += [self.event("response.output_text.done", item_id=item["id"], output_index=out_index,
                                  content_index=0, text=text, logprobs=[]),
                       self.event("response.content_part.done", item_id=item["id"], output_index=out_index,
                                  content_index=0, part=part)]
        elif item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part] if text else []
            item.pop("status", None)
            events += [self.event("response.reasoning_summary_text.done", item_id=item["id"],
                                  output_index=out_index, summary_index=0, text=text),
                       self.event("response.reasoning_summary_part.done", item_id=item["id"],
                                  output_index=out_index, summary_index=0, part=part)]
        else:
            try:
                args = json.loads(text) if text.strip() else {}
            except ValueError:
                args = {"input": text} if item["type"] == "custom_tool_call" else {}
            flat = self.flat.pop(event.index, item["name"])
            fields = call_item_fields(flat, args if isinstance(args, dict) else {}, self.tool_map)
            if item["type"] == "function_call":
                # Keep the arguments exactly as streamed when they were valid JSON text.
                item["arguments"] = text if text.strip() else "{}"
                events.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                         output_index=out_index, name=item["name"], arguments=item["arguments"]))
            else:
                item["input"] = fields.get("input", "")
                events += [self.event("response.custom_tool_call_input.delta", item_id=item["id"],
                                      output_index=out_index, delta=item["input"]),
                           self.event("response.custom_tool_call_input.done", item_id=item["id"],
                                      output_index=out_index, input=item["input"])]
        events.append(self.event("response.output_item.done", output_index=out_index, item=item))
        return events

    def finish(self, event: StreamFinish) -> list[bytes]:
        events: list[bytes] = []
        for index in list(self.open):
            events += self.block_stop(BlockStop(index=index))
        usage = event.usage
        if not usage.input_tokens and self.usage.input_tokens:
            usage = usage.model_copy(update={"input_tokens": self.usage.input_tokens})
        status = _status(event.stop_reason)
        response = self.snapshot(status, usage=usage, stop_reason=event.stop_reason)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self.event(kind, response=response))
        self.done = True
        if self.on_complete is not None:
            self.on_complete(response)
        return events

    def error(self, info: ErrorInfo) -> list[bytes]:
        self.done = True
        events = [] if self.started else self.start(None)
        events.append(self.event("error", code=info.code or info.kind, message=info.message, param=info.param))
        events.append(self.event("response.failed", response=self.snapshot("failed", error=info)))
        return events

    def feed(self, event: StreamEvent) -> list[bytes]:
        """SSE bytes for one canonical event."""
        if self.done:
            return []
        if isinstance(event, StreamStart):
            return self.start(event)
        prefix = [] if self.started or isinstance(event, StreamError) else self.start(None)
        if isinstance(event, BlockStart):
            return prefix + self.block_start(event)
        if isinstance(event, BlockDelta):
            return prefix + self.block_delta(event)
        if isinstance(event, BlockStop):
            return prefix + self.block_stop(event)
        if isinstance(event, StreamFinish):
            return prefix + self.finish(event)
        return self.error(event.error)


async def render_stream(events: AsyncIterator[StreamEvent], request: ChatRequest,
                        on_complete: Callable[[dict[str, Any]], None] | None = None) -> AsyncIterator[bytes]:
    """Render canonical events as Responses SSE, one chunk per canonical event."""
    renderer = StreamRenderer(request, on_complete)
    async for event in events:
        chunk = b"".join(renderer.feed(event))
        if chunk:
            yield chunk
    if not renderer.done:
        info = ErrorInfo(status=502, kind="api_error", message="The stream ended before the response completed.")
        yield b"".join(renderer.error(info))
