"""The pass-through relay: upstream bytes to the client as they come, with token usage read on the side.

Usage metering must not cost a parse of the whole stream: a format's ``UsageScan`` names a marker that only
usage-carrying events contain, so per chunk the relay does one ``bytes.find`` and keeps at most the unfinished
last line; only the few lines with the marker are decoded. Formats without a scan fall back to a capped copy
parsed after the last byte went out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from higgs.interfaces import Operation, UsageScan, WireFormat
from higgs.messages import Usage
from higgs.server.streaming import passthrough_usage

log = logging.getLogger("higgs.server")

#: Content types relayed as streams of events (usage read line by line).
STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl", "application/json-seq")
#: An unfinished line longer than this is not a usage event: the scanner stops carrying it.
MAX_LINE = 1024 * 1024
#: Bodies (or fallback copies) larger than this are not parsed for usage.
MAX_BODY = 4 * 1024 * 1024


class UsageMeter:
    """Reads token usage from a passed-through response while it passes; ``feed`` every chunk in order."""

    def feed(self, chunk: bytes) -> None:
        """Look at one chunk (never modified, never kept beyond what the meter needs)."""

    async def result(self) -> Usage | None:
        """The usage seen, or None when the response carried none (or could not be read)."""
        return None


class StreamScanner(UsageMeter):
    """SSE or NDJSON: decodes only the lines that contain the format's marker."""

    __slots__ = ("_marker", "_read", "_tail", "_usage")

    def __init__(self, scan: UsageScan) -> None:
        self._marker = scan.marker
        self._read = scan.read
        self._tail = b""
        self._usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        """Scan ``chunk`` (plus the unfinished line before it) for complete marker lines."""
        data = self._tail + chunk if self._tail else chunk
        at = data.find(self._marker)
        while at >= 0:
            end = data.find(b"\n", at)
            if end < 0:
                break  # the line is unfinished: it stays in the tail
            self._line(data[data.rfind(b"\n", 0, at) + 1:end])
            at = data.find(self._marker, end + 1)
        cut = data.rfind(b"\n") + 1
        tail = data[cut:] if cut < len(data) else b""
        self._tail = tail if len(tail) <= MAX_LINE else b""

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:]
        try:
            event = json.loads(line)
            if isinstance(event, dict):
                self._usage = self._read(event, self._usage or Usage())
        except Exception:  # a malformed event only costs the record its usage
            log.debug("unreadable usage event in a pass-through stream", exc_info=True)

    async def result(self) -> Usage | None:
        """Usage after the last line (an NDJSON stream may end without a newline)."""
        if self._tail and self._marker in self._tail:
            self._line(self._tail)
        self._tail = b""
        return self._usage


class BodyScanner(UsageMeter):
    """A whole JSON body: the chunks are kept (by reference) and decoded once at the end."""

    def __init__(self, scan: UsageScan | None, fmt: WireFormat, operation: Operation, content_type: str) -> None:
        self._scan = scan
        self._fmt = fmt
        self._operation = operation
        self._content_type = content_type
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        """Keep a reference to ``chunk`` unless the body is already too large to be worth parsing."""
        self._size += len(chunk)
        if self._size <= MAX_BODY:
            self._parts.append(chunk)
        elif self._parts:
            self._parts = []

    async def result(self) -> Usage | None:
        """Decode the body and read its usage."""
        if not self._parts or self._size > MAX_BODY:
            return None
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        if self._scan is None:  # no scan from the format: its full upstream parsers
            return await passthrough_usage(self._fmt, self._operation, self._content_type, data)
        try:
            body = json.loads(data)
            return self._scan.read(body, Usage()) if isinstance(body, dict) else None
        except Exception:
            log.debug("no usage from a %s pass-through body", self._operation, exc_info=True)
            return None


def usage_meter(fmt: WireFormat, operation: Operation, status: int, content_type: str) -> UsageMeter | None:
    """The cheapest meter that reads usage from this response, or None when there is nothing to read."""
    if status >= 400 or operation == "models":
        return None
    scan = fmt.usage_scan(operation)
    if content_type.startswith(STREAM_TYPES):
        if scan is not None:
            return StreamScanner(scan)
        return BodyScanner(None, fmt, operation, content_type) if operation == "chat" else None
    return BodyScanner(scan, fmt, operation, content_type)


async def relay(response: web.StreamResponse, request: web.Request, body: AsyncIterator[bytes],
                meter: UsageMeter | None, exhausted: Callable[[], bool] | None = None) -> float | None:
    """Send the headers, then each chunk of ``body`` as it arrives, then end the response.

    With ``exhausted`` (true once ``body`` has nothing more), the last chunk and the end of the response go
    out in one write (one packet, one wake-up of the client fewer). Returns the ``perf_counter`` time of the
    first non-empty chunk (TTFT), or None. A client that goes away ends the loop quietly (aiohttp cancels
    the handler anyway); ``body`` is always closed.
    """
    await response.prepare(request)
    first: float | None = None
    ended = False
    write = response.write
    try:
        async for chunk in body:
            if not chunk:
                continue
            if ended:
                log.warning("a pass-through body yielded bytes after it said it was exhausted; dropped")
                break
            if first is None:
                first = time.perf_counter()
            if exhausted is not None and exhausted():
                await response.write_eof(chunk)
                ended = True
            else:
                await write(chunk)
            if meter is not None:
                meter.feed(chunk)
        if not ended:
            await response.write_eof()
    except ConnectionResetError:
        log.debug("client went away mid-stream")
    finally:
        closer = getattr(body, "aclose", None)
        if closer is not None:
            await closer()
    return first
