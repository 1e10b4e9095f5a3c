"""Server-sent events: encode helpers and an incremental parser.

The parser follows the WHATWG ``text/event-stream`` rules (``\\n``, ``\\r\\n`` or ``\\r`` line ends, ``:``
comments, multi-line ``data``, one optional space after the colon, an event dispatched on a blank line) and
is fed arbitrary byte chunks: a UTF-8 character or a line split across network reads is reassembled.

It is a few dozen lines, so higgs carries its own rather than a dependency: the maintained SSE libraries
(``httpx-sse``, ``sse-starlette``, ``aiohttp-sse``) are tied to one HTTP client or server, while formats and
providers need the parser over any async byte iterator (aiohttp ``StreamReader``, test fixtures).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncGenerator, AsyncIterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["SSEEvent", "SSEParser", "encode", "encode_json", "iter_data", "iter_events"]


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event. ``event`` is ``"message"`` when the stream named none."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The ``data`` field parsed as JSON."""
        return json.loads(self.data)


def encode(data: str, event: str | None = None) -> bytes:
    """Encode one event; multi-line ``data`` becomes several ``data:`` lines."""
    lines = [f"event: {event}"] if event else []
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def encode_json(payload: Any, event: str | None = None) -> bytes:
    """Encode ``payload`` as compact JSON in one ``data:`` line (JSON never contains a raw newline)."""
    return encode(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), event)


class SSEParser:
    """Incremental event-stream parser: ``feed(bytes)`` yields the events completed by those bytes."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._first = True

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        """Consume ``chunk`` and yield every event it completes."""
        text = self._decoder.decode(chunk)
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        self._buffer += text
        yield from self._drain(final=False)

    def close(self) -> Iterator[SSEEvent]:
        """End of stream: a trailing line without its newline still counts, and a pending event is dispatched.

        The spec drops an event that was never ended by a blank line; higgs is lenient because some servers end
        with ``data: [DONE]\\n`` and nothing more.
        """
        self._buffer += self._decoder.decode(b"", final=True)
        yield from self._drain(final=True)
        event = self._dispatch()
        if event is not None:
            yield event

    def _drain(self, *, final: bool) -> Iterator[SSEEvent]:
        buffer = self._buffer
        if "\r" not in buffer:  # the common case: "\n" line ends, split in one pass
            *lines, rest = buffer.split("\n")
            self._buffer = "" if final else rest
            if final and rest:
                lines.append(rest)
            for line in lines:
                event = self._line(line)
                if event is not None:
                    yield event
            return
        start = 0
        while True:
            cut = _line_end(buffer, start)
            if cut is None:
                break
            end, after = cut
            # A lone "\r" at the very end may be the first half of "\r\n": wait for more bytes.
            if buffer[end] == "\r" and after == len(buffer) and not final:
                break
            event = self._line(buffer[start:end])
            start = after
            if event is not None:
                yield event
        self._buffer = buffer[start:]
        if final and self._buffer:
            self._line(self._buffer)
            self._buffer = ""

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._id, retry=self._retry)
        self._data, self._event = [], ""
        return event


def _line_end(buffer: str, start: int) -> tuple[int, int] | None:
    """Position of the next line terminator at or after ``start`` and the index just past it."""
    n = buffer.find("\n", start)
    r = buffer.find("\r", start)
    if r == -1 and n == -1:
        return None
    if r == -1 or (n != -1 and n < r):
        return n, n + 1
    if r + 1 < len(buffer) and buffer[r + 1] == "\n":
        return r, r + 2
    return r, r + 1


async def iter_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[SSEEvent, None]:
    """Parse an async byte iterator (e.g. ``response.content.iter_any()``) into events as they complete."""
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event


async def iter_data(chunks: AsyncIterable[bytes]) -> AsyncGenerator[str, None]:
    """Only the ``data`` of each event, for streams that do not name their events (OpenAI)."""
    async for event in iter_events(chunks):
        yield event.data
