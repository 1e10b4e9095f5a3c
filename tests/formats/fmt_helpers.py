"""Shared helpers for the format tests: fixtures from disk, chunked byte streams, event collection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_json(name: str) -> Any:
    """A JSON fixture."""
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    """A raw fixture (SSE bodies)."""
    return (FIXTURES / name).read_bytes()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` split at the given offsets (sorted, deduplicated, clipped)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


async def aiter_bytes(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An async byte iterator over ``pieces``."""
    for piece in pieces:
        yield piece


async def aiter_list(items: Iterable[Any]) -> AsyncIterator[Any]:
    """An async iterator over ``items``."""
    for item in items:
        yield item


async def collect(source: AsyncIterator[Any]) -> list[Any]:
    """All items of an async iterator."""
    return [item async for item in source]


def sse_payloads(body: bytes) -> list[tuple[str | None, Any]]:
    """``(event name, parsed data)`` for each event of a complete SSE body; ``[DONE]`` stays a string."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        text = "\n".join(data)
        out.append((name, text if text == "[DONE]" else json.loads(text)))
    return out
