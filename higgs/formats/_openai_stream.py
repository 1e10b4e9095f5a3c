"""OpenAI streams: canonical events -> ``chat.completion.chunk`` SSE, and upstream chunks -> canonical events.

Both directions are incremental: each input event produces its output at once, nothing is buffered beyond
the state needed to number tool calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError

from higgs.formats._common import compact_json, error_from_exception, kind_for_status
from higgs.formats._openai_response import FINISH_TO_STOP, finish_reason, parse_usage, usage_json
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ErrorInfo,
    StopReason,
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
from higgs.sse import encode_json, iter_events

log = logging.getLogger("higgs.formats")
DONE = b"data: [DONE]\n\n"


async def render_stream(
    events: AsyncIterator[StreamEvent],
    *,
    include_usage: bool,
    render_error: Callable[[ErrorInfo], dict[str, Any]],
    fallback_model: str = "",
) -> AsyncIterator[bytes]:
    """Render canonical events as ``chat.completion.chunk`` SSE bytes, then ``data: [DONE]``."""
    chunk_id, model, created = new_id("chatcmpl"), fallback_model, 0
    tool_slots: dict[int, int] = {}  # canonical block index -> OpenAI tool_calls index
    started = finished = False

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            payload["usage"] = None
        return encode_json(payload)

    try:
        async for event in events:
            if finished:
                continue  # drain, so the provider's generator ends by itself and runs its cleanup
            if isinstance(event, StreamStart):
                chunk_id, model, created = event.id, event.model or fallback_model, event.created
                started = True
                yield chunk({"role": "assistant", "content": ""})
                continue
            if not started:  # a provider that skipped StreamStart still gets a well-formed stream
                started = True
                yield chunk({"role": "assistant", "content": ""})
            if isinstance(event, BlockStart):
                block = event.block
                if isinstance(block, ToolUseBlock):
                    slot = tool_slots.setdefault(event.index, len(tool_slots))
                    arguments = compact_json(block.input) if block.input else ""  # usually empty: deltas follow
                    yield chunk({"tool_calls": [{"index": slot, "id": block.id, "type": "function",
                                                 "function": {"name": block.name, "arguments": arguments}}]})
                elif isinstance(block, TextBlock) and block.text:
                    yield chunk({"content": block.text})
                elif isinstance(block, ThinkingBlock) and block.thinking and not block.redacted:
                    yield chunk({"reasoning_content": block.thinking})
            elif isinstance(event, BlockDelta):
                delta = event.delta
                if isinstance(delta, TextDelta):
                    yield chunk({"content": delta.text})
                elif isinstance(delta, ThinkingDelta):
                    yield chunk({"reasoning_content": delta.thinking})
                elif isinstance(delta, ToolArgsDelta):
                    slot = tool_slots.setdefault(event.index, len(tool_slots))
                    yield chunk({"tool_calls": [{"index": slot, "function": {"arguments": delta.partial_json}}]})
                # a SignatureDelta has no OpenAI counterpart
            elif isinstance(event, StreamFinish):
                finished = True
                yield chunk({}, finish_reason(event.stop_reason))
                if include_usage:
                    yield encode_json({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                       "model": model, "system_fingerprint": None, "choices": [],
                                       "usage": usage_json(event.usage)})
                yield DONE
            elif isinstance(event, StreamError):
                finished = True
                yield encode_json(render_error(event.error))
                yield DONE
    except Exception as err:
        if finished:
            log.debug("provider failed after its stream finished: %r", err)
            return
        finished = True
        yield encode_json(render_error(error_from_exception(err)))
        yield DONE
    if not finished:
        yield encode_json(render_error(ErrorInfo(status=502, kind="api_error",
                                                 message="The upstream stream ended before it finished.")))
        yield DONE


class _ChunkParser:
    """State for turning OpenAI chunks into canonical events."""

    def __init__(self) -> None:
        self.started = False
        self.open_index: int | None = None
        self.open_kind: str | None = None
        self.next_index = 0
        self.tools: dict[int, int] = {}  # OpenAI tool_calls index -> canonical block index
        self.stop: StopReason | None = None
        self.usage = Usage()
        self.finished = False

    def start(self, data: dict[str, Any]) -> list[StreamEvent]:
        if self.started:
            return []
        self.started = True
        created = data.get("created")
        return [StreamStart(id=str(data.get("id") or new_id("chatcmpl")), model=str(data.get("model") or ""),
                            **({"created": created} if isinstance(created, int) else {}))]

    def close_open(self) -> list[StreamEvent]:
        if self.open_index is None:
            return []
        index, self.open_index, self.open_kind = self.open_index, None, None
        return [BlockStop(index=index)]

    def open(self, kind: str, block: Any) -> list[StreamEvent]:
        events = self.close_open()
        self.open_index, self.open_kind = self.next_index, kind
        self.next_index += 1
        events.append(BlockStart(index=self.open_index, block=block))
        return events

    def chunk(self, data: dict[str, Any]) -> list[StreamEvent]:
        events = self.start(data)
        if isinstance(data.get("usage"), dict):
            self.usage = parse_usage(data["usage"])
        for choice in data.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 streams: only the first choice is canonical
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                if self.open_kind != "thinking":
                    events += self.open("thinking", ThinkingBlock())
                events.append(BlockDelta(index=self.next_index - 1, delta=ThinkingDelta(thinking=reasoning)))
            for text in (delta.get("content"), delta.get("refusal")):
                if isinstance(text, str) and text:
                    if self.open_kind != "text":
                        events += self.open("text", TextBlock(text=""))
                    events.append(BlockDelta(index=self.next_index - 1, delta=TextDelta(text=text)))
            if delta.get("refusal"):
                self.stop = "refusal"
            calls = delta.get("tool_calls") or []
            if isinstance(delta.get("function_call"), dict):
                calls = [{"index": 0, "function": delta["function_call"]}]
            for call in calls:
                events += self._tool_delta(call)
            reason = choice.get("finish_reason")
            if reason:
                events += self.close_open()
                if self.stop is None:
                    self.stop = FINISH_TO_STOP.get(reason, "end_turn")
        return events

    def _tool_delta(self, call: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        slot = call.get("index", len(self.tools))
        function = call.get("function") or {}
        if slot not in self.tools:
            events += self.open("tool", ToolUseBlock(id=call.get("id") or new_id("call"),
                                                     name=function.get("name") or "", input={}))
            self.tools[slot] = self.next_index - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(BlockDelta(index=self.tools[slot], delta=ToolArgsDelta(partial_json=arguments)))
        return events

    def finish(self) -> list[StreamEvent]:
        self.finished = True
        events = self.close_open()
        stop = self.stop or "end_turn"
        if stop == "end_turn" and self.tools:
            stop = "tool_use"
        events.append(StreamFinish(stop_reason=stop, usage=self.usage))
        return events


def upstream_error_info(data: dict[str, Any]) -> ErrorInfo:
    """An ``ErrorInfo`` from an ``{"error": {...}}`` object sent inside a stream."""
    from higgs.formats.openai import error_info_from_body

    return error_info_from_body(data, status=None)


async def parse_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
    """Canonical events from an upstream OpenAI chat stream, one SSE event at a time."""
    state = _ChunkParser()
    async with aclosing(iter_events(chunks)) as sse_events:
        async for sse in sse_events:
            if sse.data.strip() == "[DONE]":
                for event in state.finish():
                    yield event
                return
            try:
                data = json.loads(sse.data)
            except ValueError:
                log.debug("skipping a non-JSON stream event: %.80r", sse.data)
                continue
            if not isinstance(data, dict):
                continue
            if "error" in data or sse.event == "error":
                yield StreamError(error=upstream_error_info(data))
                return
            try:
                events = state.chunk(data)
            except (KeyError, TypeError, AttributeError, ValueError, ValidationError) as err:
                log.warning("unreadable upstream stream chunk: %s", err)
                yield StreamError(error=ErrorInfo(status=502, kind="api_error",
                                                  message="The upstream sent an unreadable stream chunk."))
                return
            for event in events:
                yield event
    if state.started and state.stop is not None:
        # Some servers end after the finish_reason (and usage) chunks without ``[DONE]``.
        for event in state.finish():
            yield event
        return
    yield StreamError(error=ErrorInfo(status=502, kind=kind_for_status(502),
                                      message="The upstream stream ended before it finished."))
