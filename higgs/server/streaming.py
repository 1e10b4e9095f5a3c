"""Streaming helpers: guarded provider event streams and the byte writer behind every streamed response."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from aiohttp import web

from higgs.errors import ApiError
from higgs.interfaces import WireFormat
from higgs.messages import (
    BlockDelta,
    ErrorInfo,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamStart,
    Usage,
)

log = logging.getLogger("higgs.server")


@dataclass
class StreamStats:
    """What the gateway learns while a stream passes through (for the request record)."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    usage: Usage = field(default_factory=Usage)
    error: ErrorInfo | None = None
    events: int = 0

    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds from the request start to the first content delta."""
        return None if self.first_token is None else (self.first_token - self.started) * 1000


async def guard_events(
    first: Iterable[StreamEvent], rest: AsyncIterator[StreamEvent], *, idle_timeout: float, stats: StreamStats
) -> AsyncIterator[StreamEvent]:
    """Yield ``first`` then ``rest``, turning failures into a final ``StreamError`` event.

    A provider exception, or no event for ``idle_timeout`` seconds, ends the stream with an error event
    that the format renders in its own wire format (the HTTP status is already sent). Cancellation (a
    client disconnect) propagates so the provider stops its work.
    """
    for event in first:
        _observe(event, stats)
        yield event
    iterator = aiter(rest)
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    event = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                error = ErrorInfo(status=504, kind="timeout",
                                  message=f"No output for {idle_timeout:g} s (server.timeout); stream closed.")
                stats.error = error
                yield StreamError(error=error)
                return
            except ApiError as err:
                stats.error = err.info
                yield StreamError(error=err.info)
                return
            except Exception:
                log.exception("provider stream failed")
                error = ErrorInfo(status=500, kind="api_error", message="The provider failed mid-stream; see the "
                                                                        "server log.")
                stats.error = error
                yield StreamError(error=error)
                return
            _observe(event, stats)
            yield event
            if isinstance(event, (StreamFinish, StreamError)):
                return
    finally:
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                log.debug("closing a provider stream failed", exc_info=True)


async def idle_limited(chunks: AsyncIterator[bytes], idle_timeout: float) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through, ending the stream when none arrives for ``idle_timeout`` seconds.

    Used for pass-through bodies, whose bytes the kernel does not interpret: a stalled upstream closes the
    client's stream instead of holding the connection open forever.
    """
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            log.warning("pass-through upstream sent nothing for %.0f s; stream closed", idle_timeout)
            return
        yield chunk


class Tee:
    """Pass chunks through while keeping a copy (up to ``limit`` bytes) and the time of the first one."""

    def __init__(self, limit: int = 4 * 1024 * 1024) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.first_chunk: float | None = None
        self.overflow = False

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield ``chunks`` unchanged, recording them."""
        async for chunk in chunks:
            if self.first_chunk is None and chunk:
                self.first_chunk = time.perf_counter()
            if not self.overflow:
                self.size += len(chunk)
                if self.size > self.limit:
                    self.overflow, self.parts = True, []
                else:
                    self.parts.append(chunk)
            yield chunk

    @property
    def data(self) -> bytes | None:
        """Everything that passed, or None past the limit."""
        return None if self.overflow else b"".join(self.parts)


async def passthrough_usage(fmt: WireFormat, operation: str, content_type: str, data: bytes) -> Usage | None:
    """Token usage of a passed-through response, read with the format's upstream parsers (None if unknown).

    Runs after the client has its last byte, so it adds no latency; any parsing problem just means no
    usage in the request record.
    """
    try:
        if content_type.startswith("text/event-stream"):
            if operation != "chat":
                return None

            async def single() -> AsyncIterator[bytes]:
                yield data

            usage = Usage()
            async for event in fmt.parse_upstream_chat_stream(single()):
                if isinstance(event, StreamStart):
                    usage = event.usage.model_copy()
                elif isinstance(event, StreamFinish):
                    usage = _merge(usage, event.usage)
            return usage
        body = json.loads(data)
        if operation == "chat":
            return fmt.parse_upstream_chat(body).usage
        if operation == "completion":
            return fmt.parse_upstream_completion(body).usage
        if operation == "embedding":
            return fmt.parse_upstream_embedding(body).usage
    except Exception:
        log.debug("no usage from a %s pass-through response", operation, exc_info=True)
    return None


def _observe(event: StreamEvent, stats: StreamStats) -> None:
    stats.events += 1
    if isinstance(event, BlockDelta):
        if stats.first_token is None:
            stats.first_token = time.perf_counter()
    elif isinstance(event, StreamStart):
        stats.usage = event.usage.model_copy()
    elif isinstance(event, StreamFinish):
        stats.usage = _merge(stats.usage, event.usage)
    elif isinstance(event, StreamError):
        stats.error = event.error


def _merge(start: Usage, final: Usage) -> Usage:
    merged = final.model_copy()
    if not merged.input_tokens:
        merged.input_tokens = start.input_tokens
    if not merged.cached_tokens:
        merged.cached_tokens = start.cached_tokens
    return merged


async def write_stream(response: web.StreamResponse, request: web.Request, chunks: AsyncIterator[bytes]) -> None:
    """Prepare ``response`` and write ``chunks`` as they come (no buffering), then end it.

    A client that goes away raises ``ConnectionResetError`` on write; the handler is then cancelled by
    aiohttp anyway, so the error just ends the loop.
    """
    await response.prepare(request)
    try:
        async for chunk in chunks:
            if chunk:
                await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        log.debug("client went away mid-stream")
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
