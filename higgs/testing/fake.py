"""``FakeProvider``: a scriptable provider for tests of the kernel and of plugins."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from higgs.errors import ApiError
from higgs.interfaces import CallContext, Provider, RawRequest, RawResponse
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
    StreamEvent,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    Usage,
)


def word_count(text: str) -> int:
    """The fake tokenizer: one token per whitespace-separated word."""
    return len(text.split())


class FakeProvider(Provider):
    """Answers every request with ``reply`` (word by word when streaming) and records what it saw.

    Args:
        models: model names it serves (``serves()`` and ``list_models()``).
        reply: the answer text.
        local: behave as the local provider (max_tokens is clamped by the kernel).
        upstream_format: a wire format name to receive same-format pass-through.
        fail: an error raised by every call (``fail_times`` times, then succeed; None = always).
        fail_midstream: raise this after the first streamed word instead.
        delay: seconds to wait before answering; chunk_delay: between streamed words.
    """

    def __init__(self, *, models: Iterable[str] = ("fake-model",), reply: str = "Hello from the fake provider.",
                 local: bool = False, upstream_format: str | None = None, fail: BaseException | None = None,
                 fail_times: int | None = None, fail_midstream: BaseException | None = None, delay: float = 0.0,
                 chunk_delay: float = 0.0, name: str = "") -> None:
        self.name = name
        self.models = list(models)
        self.reply = reply
        self.local = local
        self.upstream_format = upstream_format
        self.fail = fail
        self.fail_times = fail_times
        self.fail_midstream = fail_midstream
        self.delay = delay
        self.chunk_delay = chunk_delay
        self.calls: list[tuple[str, Any]] = []
        self.started = False
        self.closed = False
        self.cancelled = 0

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, owned_by=self.name or "fake", kind="local" if self.local else "remote")
                for m in self.models]

    def serves(self, model: str) -> bool:
        return model in self.models

    def state(self) -> dict[str, Any]:
        return {"calls": len(self.calls)}

    # -- behaviour --------------------------------------------------------------------------------
    async def _prelude(self, operation: str, request: Any) -> None:
        self.calls.append((operation, request))
        if self.fail is not None and (self.fail_times is None or self.fail_times > 0):
            if self.fail_times is not None:
                self.fail_times -= 1
            raise self.fail
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

    def _usage(self, prompt: str) -> Usage:
        return Usage(input_tokens=word_count(prompt), output_tokens=word_count(self.reply))

    async def chat(self, request: ChatRequest, call: CallContext) -> ChatResponse:
        await self._prelude("chat", request)
        return ChatResponse(model=request.model, content=[TextBlock(text=self.reply)],
                            usage=self._usage(_prompt(request)))

    async def chat_stream(self, request: ChatRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        await self._prelude("chat_stream", request)
        usage = self._usage(_prompt(request))
        yield StreamStart(model=request.model, usage=Usage(input_tokens=usage.input_tokens))
        yield BlockStart(index=0, block=TextBlock(text=""))
        async for piece in self._pieces():
            yield BlockDelta(index=0, delta=TextDelta(text=piece))
        yield BlockStop(index=0)
        yield StreamFinish(stop_reason="end_turn", usage=usage)

    async def _pieces(self) -> AsyncIterator[str]:
        words = self.reply.split(" ")
        try:
            for i, word in enumerate(words):
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                yield word if i == 0 else " " + word
                if i == 0 and self.fail_midstream is not None:
                    raise self.fail_midstream
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def complete(self, request: CompletionRequest, call: CallContext) -> CompletionResponse:
        await self._prelude("complete", request)
        prompt = " ".join(p for p in request.prompt if isinstance(p, str))
        return CompletionResponse(model=request.model, choices=[CompletionChoice(text=self.reply)],
                                  usage=self._usage(prompt))

    async def complete_stream(self, request: CompletionRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        await self._prelude("complete_stream", request)
        prompt = " ".join(p for p in request.prompt if isinstance(p, str))
        yield StreamStart(model=request.model)
        async for piece in self._pieces():
            yield BlockDelta(index=0, delta=TextDelta(text=piece))
        yield StreamFinish(stop_reason="end_turn", usage=self._usage(prompt))

    async def embed(self, request: EmbeddingRequest, call: CallContext) -> EmbeddingResponse:
        await self._prelude("embed", request)
        vectors = [_vector(str(text)) for text in request.input]
        tokens = sum(word_count(t) if isinstance(t, str) else len(t) for t in request.input)
        return EmbeddingResponse(model=request.model, data=vectors, usage=Usage(input_tokens=tokens))

    async def count_tokens(self, request: ChatRequest, call: CallContext) -> int:
        await self._prelude("count_tokens", request)
        return word_count(_prompt(request))

    async def passthrough(self, raw: RawRequest, call: CallContext) -> RawResponse:
        """Echo the forwarded request as JSON: ``{"passthrough": true, "path", "body", "provider"}``."""
        await self._prelude("passthrough", raw)
        payload = json.dumps({"passthrough": True, "path": raw.path, "provider": self.name,
                              "body": json.loads(raw.body)}).encode()

        async def body() -> AsyncIterator[bytes]:
            yield payload

        return RawResponse(status=200, headers=[("content-type", "application/json"), ("connection", "close")],
                           body=body())


def _prompt(request: ChatRequest) -> str:
    return " ".join([request.system_text(), *(m.text() for m in request.messages)]).strip()


def _vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 6) for b in digest[:dims]]


def provider_error(status: int = 503, *, retryable: bool = True, message: str = "fake upstream overloaded") -> ApiError:
    """A ``ProviderError`` as a real upstream failure would raise it."""
    from higgs.errors import ProviderError

    return ProviderError(status, "overloaded" if status in (503, 529) else "api_error", message, retryable=retryable)
