"""Turning generated text into canonical stream events.

The engine decodes tokens into text and hands each new piece to an ``OutputParser``, which splits it into
``Segment`` records (plain text, reasoning, tool calls). An ``EventBuilder`` turns those segments into
``BlockStart``/``BlockDelta``/``BlockStop`` events with consistent indices and works out the final stop
reason. The default parser (``PlainTextParser``) treats everything as text; ``higgs_mlx.agents`` supplies
parsers for reasoning tags and tool-call syntaxes through ``make_output_parser``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    StopReason,
    StreamEvent,
    StreamFinish,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolArgsDelta,
    ToolUseBlock,
    Usage,
)


@dataclass(frozen=True)
class TextSegment:
    """Visible answer text."""

    text: str


@dataclass(frozen=True)
class ThinkingSegment:
    """Reasoning text (what the model wrote between its reasoning tags)."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A tool call begins: its id and the function name."""

    id: str
    name: str


@dataclass(frozen=True)
class ToolArgs:
    """A fragment of the current tool call's JSON arguments (fragments concatenate to a JSON object)."""

    text: str


@dataclass(frozen=True)
class ToolCallEnd:
    """The current tool call is complete."""


Segment = TextSegment | ThinkingSegment | ToolCallStart | ToolArgs | ToolCallEnd


@runtime_checkable
class OutputParser(Protocol):
    """Splits a stream of generated text into segments.

    ``feed`` receives each newly decoded piece of text (never re-sent) and returns the segments it can
    already decide on; text that might still turn out to be markup (a partial ``<think>`` tag) may be held
    back. ``finish`` is called once at the end and flushes whatever is held.
    """

    def feed(self, text: str) -> list[Segment]:
        """Segments for this new piece of text."""
        ...

    def finish(self) -> list[Segment]:
        """Segments still held back when generation ends."""
        ...


class PlainTextParser:
    """Everything the model writes is answer text."""

    def feed(self, text: str) -> list[Segment]:
        """Return ``text`` as one text segment (nothing when empty)."""
        return [TextSegment(text)] if text else []

    def finish(self) -> list[Segment]:
        """Nothing is ever held back."""
        return []


class EventBuilder:
    """Turns segments into block events with correct indices, and tracks what was emitted.

    Consecutive segments of the same kind share one block; a change of kind closes the open block and
    opens the next one at the next index. A tool call is always its own block.
    """

    def __init__(self) -> None:
        self._index = -1
        self._open: str | None = None  # "text" | "thinking" | "tool_use" | None
        self.tool_calls = 0
        self.text = ""
        self.thinking = ""

    @property
    def open_kind(self) -> str | None:
        """The kind of the block currently open, if any."""
        return self._open

    def _close(self) -> list[StreamEvent]:
        if self._open is None:
            return []
        self._open = None
        return [BlockStop(index=self._index)]

    def _start(self, kind: str, block: TextBlock | ThinkingBlock | ToolUseBlock) -> list[StreamEvent]:
        events = self._close()
        self._index += 1
        self._open = kind
        events.append(BlockStart(index=self._index, block=block))
        return events

    def push(self, segments: list[Segment]) -> list[StreamEvent]:
        """Events for ``segments``, in order."""
        events: list[StreamEvent] = []
        for seg in segments:
            if isinstance(seg, TextSegment):
                if not seg.text:
                    continue
                if self._open != "text":
                    events += self._start("text", TextBlock(text=""))
                self.text += seg.text
                events.append(BlockDelta(index=self._index, delta=TextDelta(text=seg.text)))
            elif isinstance(seg, ThinkingSegment):
                if not seg.text:
                    continue
                if self._open != "thinking":
                    events += self._start("thinking", ThinkingBlock(thinking=""))
                self.thinking += seg.text
                events.append(BlockDelta(index=self._index, delta=ThinkingDelta(thinking=seg.text)))
            elif isinstance(seg, ToolCallStart):
                self.tool_calls += 1
                events += self._start("tool_use", ToolUseBlock(id=seg.id, name=seg.name, input={}))
            elif isinstance(seg, ToolArgs):
                if self._open != "tool_use" or not seg.text:
                    continue  # arguments outside a tool call are a parser bug; never emit a stray delta
                events.append(BlockDelta(index=self._index, delta=ToolArgsDelta(partial_json=seg.text)))
            elif isinstance(seg, ToolCallEnd) and self._open == "tool_use":
                events += self._close()
        return events

    def finish(
        self, stop_reason: StopReason | None, usage: Usage, stop_sequence: str | None = None
    ) -> list[StreamEvent]:
        """Close the open block and emit ``StreamFinish``.

        A natural end (``end_turn``) after at least one tool call becomes ``tool_use``; ``max_tokens`` and
        ``stop_sequence`` are kept as they are.
        """
        events = self._close()
        if stop_reason == "end_turn" and self.tool_calls:
            stop_reason = "tool_use"
        events.append(StreamFinish(stop_reason=stop_reason, stop_sequence=stop_sequence, usage=usage))
        return events
