"""Server-sent events helpers for tests: parse a complete body or iterate a live stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass
class SSEEvent:
    """One SSE event: ``event`` name (None when absent) and the joined ``data`` lines."""

    event: str | None
    data: str

    def json(self) -> Any:
        """``data`` parsed as JSON."""
        return json.loads(self.data)


def parse_sse(body: bytes | str) -> list[SSEEvent]:
    """Parse a complete SSE body (``\\n``, ``\\r\\n`` or ``\\r`` line ends; comments skipped)."""
    text = body.decode() if isinstance(body, bytes) else body
    events: list[SSEEvent] = []
    name: str | None = None
    data: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if data or name is not None:
                events.append(SSEEvent(name, "\n".join(data)))
            name, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        events.append(SSEEvent(name, "\n".join(data)))
    return events


async def iter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """Yield events from a byte stream as soon as each is complete (e.g. ``response.content.iter_any()``)."""
    buffer = ""
    async for chunk in chunks:
        buffer += chunk.decode()
        buffer = buffer.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            for event in parse_sse(block + "\n\n"):
                yield event
    for event in parse_sse(buffer):
        yield event
