"""Anthropic streams: canonical events -> Messages SSE, and upstream Messages SSE -> canonical events.

Both directions are incremental. Canonical block indexes are renumbered so that the client always sees
contiguous indexes from 0, whatever the provider produced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError

from higgs.formats._anthropic_chat import content_json, parse_usage, stop_reason, usage_json
from higgs.formats._common import anthropic_tool_id, error_from_exception
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ContentBlock,
    ErrorInfo,
    SignatureDelta,
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
    UnknownBlock,
    Usage,
    new_id,
)
from higgs.sse import encode_json, iter_events

log = logging.getLogger("higgs.formats")


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_json({"type": name, **payload}, event=name)


def _start_json(block: ContentBlock) -> dict[str, Any] | None:
    """The ``content_block`` of a ``content_block_start``: empty text/thinking/input, filled by deltas."""
    if isinstance(block, TextBlock):
        return {"type": "text", "text": ""}
    if isinstance(block, ThinkingBlock) and not block.redacted:
        return {"type": "thinking", "thinking": "", "signature": ""}
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": anthropic_tool_id(block.id), "name": block.name, "input": {}}
    return content_json(block)


def _delta_json(delta: Any) -> dict[str, Any]:
    if isinstance(delta, TextDelta):
        return {"type": "text_delta", "text": delta.text}
    if isinstance(delta, ThinkingDelta):
        return {"type": "thinking_delta", "thinking": delta.thinking}
    if isinstance(delta, SignatureDelta):
        return {"type": "signature_delta", "signature": delta.signature}
    return {"type": "input_json_delta", "partial_json": delta.partial_json}


def _initial_delta(block: ContentBlock) -> Any:
    """Content a block started with, re-sent as its first delta (clients accumulate deltas)."""
    if isinstance(block, TextBlock) and block.text:
        return TextDelta(text=block.text)
    if isinstance(block, ThinkingBlock) and not block.redacted and block.thinking:
        return ThinkingDelta(thinking=block.thinking)
    if isinstance(block, ToolUseBlock) and block.input:
        return ToolArgsDelta(partial_json=json.dumps(block.input, separators=(",", ":")))
    return None


async def render_stream(
    events: AsyncIterator[StreamEvent],
    *,
    model: str,
    render_error: Callable[[ErrorInfo], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """Render canonical events as Anthropic Messages SSE (``message_start`` ... ``message_stop``)."""
    indexes: dict[int, int] = {}  # canonical index -> client index
    open_blocks: list[int] = []
    skipped: set[int] = set()  # canonical blocks this client cannot receive (and their deltas)
    started = finished = False

    def message_start(event: StreamStart | None) -> bytes:
        usage = usage_json(event.usage if event else Usage())
        message: dict[str, Any] = {"id": event.id if event else new_id("msg"), "type": "message", "role": "assistant",
                   "model": (event.model if event else "") or model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": usage}
        return _event("message_start", {"message": message})

    def stop(canonical: int) -> bytes:
        open_blocks.remove(canonical)
        return _event("content_block_stop", {"index": indexes[canonical]})

    try:
        async for event in events:
            if finished:
                continue  # drain, so the provider's generator ends by itself and runs its cleanup
            if isinstance(event, StreamStart):
                if not started:
                    started = True
                    yield message_start(event)
                    yield _event("ping", {})
                continue
            if not started:
                started = True
                yield message_start(None)
            if isinstance(event, BlockStart | BlockDelta) and event.index in skipped:
                continue
            if isinstance(event, BlockStart | BlockDelta) and event.index not in indexes:
                block: ContentBlock = event.block if isinstance(event, BlockStart) else _implied_block(event)
                start = _start_json(block)
                if start is None:
                    log.debug("skipping a %s block the Anthropic client cannot receive", block.type)
                    skipped.add(event.index)
                    continue
                indexes[event.index] = len(indexes)
                open_blocks.append(event.index)
                yield _event("content_block_start", {"index": indexes[event.index], "content_block": start})
                first = _initial_delta(block) if isinstance(event, BlockStart) else None
                if first is not None:
                    yield _event("content_block_delta", {"index": indexes[event.index], "delta": _delta_json(first)})
                if isinstance(event, BlockStart):
                    continue
            if isinstance(event, BlockDelta):
                if event.index not in open_blocks:
                    continue
                yield _event("content_block_delta", {"index": indexes[event.index], "delta": _delta_json(event.delta)})
            elif isinstance(event, BlockStop):
                if event.index in open_blocks:
                    yield stop(event.index)
            elif isinstance(event, StreamFinish):
                finished = True
                for index in list(open_blocks):
                    yield stop(index)
                yield _event("message_delta", {"delta": {"stop_reason": event.stop_reason or "end_turn",
                                                         "stop_sequence": event.stop_sequence},
                                               "usage": usage_json(event.usage)})
                yield _event("message_stop", {})
            elif isinstance(event, StreamError):
                finished = True
                yield _event("error", _error_payload(render_error(event.error)))
    except Exception as err:
        if finished:
            log.debug("provider failed after its stream finished: %r", err)
            return
        finished = True
        info = error_from_exception(err)
        if not started:
            yield message_start(None)
        yield _event("error", _error_payload(render_error(info)))
    if not finished:
        if not started:
            yield message_start(None)
        yield _event("error", _error_payload(render_error(
            ErrorInfo(status=502, kind="api_error", message="The upstream stream ended before it finished."))))


def _error_payload(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "type"}


def _implied_block(event: BlockDelta) -> ContentBlock:
    """The block a delta implies when a provider skipped its ``BlockStart``."""
    delta = event.delta
    if isinstance(delta, ThinkingDelta | SignatureDelta):
        return ThinkingBlock()
    if isinstance(delta, ToolArgsDelta):
        return ToolUseBlock(id=new_id("toolu"), name="")
    return TextBlock(text="")


class _EventParser:
    """State for turning Anthropic stream events into canonical events."""

    def __init__(self, error_info: Callable[[dict[str, Any]], ErrorInfo]) -> None:
        self.error_info = error_info
        self.usage = Usage()
        self.stop: StopReason | None = None
        self.stop_sequence: str | None = None
        self.started = False
        self.done = False

    def event(self, kind: str, data: dict[str, Any]) -> list[StreamEvent]:
        if kind == "message_start":
            message = data.get("message") or {}
            self.usage = parse_usage(message.get("usage"))
            self.started = True
            return [StreamStart(id=str(message.get("id") or new_id("msg")), model=str(message.get("model") or ""),
                                usage=self.usage)]
        if kind == "content_block_start":
            raw = data.get("content_block") or {}
            index = int(data.get("index", 0))
            events: list[StreamEvent] = [BlockStart(index=index, block=_start_block(raw))]
            initial = _initial_delta(_start_block(raw, keep=True))
            if initial is not None and not isinstance(initial, ToolArgsDelta):
                events.append(BlockDelta(index=index, delta=initial))
            return events
        if kind == "content_block_delta":
            delta = _parse_delta(data.get("delta") or {})
            return [BlockDelta(index=int(data.get("index", 0)), delta=delta)] if delta is not None else []
        if kind == "content_block_stop":
            return [BlockStop(index=int(data.get("index", 0)))]
        if kind == "message_delta":
            delta = data.get("delta") or {}
            self.stop = stop_reason(delta.get("stop_reason")) or self.stop
            if isinstance(delta.get("stop_sequence"), str):
                self.stop_sequence = delta["stop_sequence"]
            self.usage = parse_usage(data.get("usage"), self.usage)
            return []
        if kind == "message_stop":
            self.done = True
            return [StreamFinish(stop_reason=self.stop or "end_turn", stop_sequence=self.stop_sequence,
                                 usage=self.usage)]
        if kind == "error":
            self.done = True
            return [StreamError(error=self.error_info(data))]
        return []  # ping, and event types added later


async def parse_stream(
    chunks: AsyncIterator[bytes], error_info: Callable[[dict[str, Any]], ErrorInfo]
) -> AsyncIterator[StreamEvent]:
    """Canonical events from an upstream Anthropic Messages stream, one SSE event at a time."""
    state = _EventParser(error_info)
    async with aclosing(iter_events(chunks)) as sse_events:
        async for sse in sse_events:
            try:
                data = json.loads(sse.data)
            except ValueError:
                log.debug("skipping a non-JSON stream event: %.80r", sse.data)
                continue
            if not isinstance(data, dict):
                continue
            try:
                events = state.event(str(data.get("type") or sse.event), data)
            except (KeyError, TypeError, AttributeError, ValueError, ValidationError) as err:
                log.warning("unreadable upstream stream event: %s", err)
                yield StreamError(error=ErrorInfo(status=502, kind="api_error",
                                                  message="The upstream sent an unreadable stream event."))
                return
            for event in events:
                yield event
            if state.done:
                return
    message = ("The upstream stream ended before message_stop." if state.started
               else "The upstream sent an empty stream.")
    yield StreamError(error=ErrorInfo(status=502, kind="api_error", message=message))


def _start_block(raw: dict[str, Any], *, keep: bool = False) -> ContentBlock:
    kind = raw.get("type")
    if kind == "text":
        return TextBlock(text=str(raw.get("text") or "") if keep else "")
    if kind == "thinking":
        return ThinkingBlock(thinking=str(raw.get("thinking") or "") if keep else "")
    if kind == "redacted_thinking":
        return ThinkingBlock(redacted=True, data=str(raw.get("data") or ""))
    if kind == "tool_use":
        return ToolUseBlock(id=str(raw.get("id") or new_id("toolu")), name=str(raw.get("name") or ""), input={})
    return UnknownBlock(type=str(kind), raw=raw)


def _parse_delta(raw: dict[str, Any]) -> Any:
    kind = raw.get("type")
    if kind == "text_delta":
        return TextDelta(text=str(raw.get("text") or ""))
    if kind == "input_json_delta":
        return ToolArgsDelta(partial_json=str(raw.get("partial_json") or ""))
    if kind == "thinking_delta":
        return ThinkingDelta(thinking=str(raw.get("thinking") or ""))
    if kind == "signature_delta":
        return SignatureDelta(signature=str(raw.get("signature") or ""))
    log.debug("skipping a %r delta", kind)
    return None
