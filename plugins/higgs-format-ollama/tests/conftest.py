"""Fixtures: the real gateway app with this plugin, a scripted local provider and a loopback Ollama upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import higgs_format_ollama
import pytest
from aiohttp import web

from higgs.hookspecs import hookimpl
from higgs.interfaces import CallContext, Provider
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ContentBlock,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelInfo,
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
)
from higgs.remote import RemoteProvider
from higgs.specs import ProviderSpec
from higgs.testing import build_app, serve_app

PLUGIN = ("ollama-format", higgs_format_ollama)


class ScriptedProvider(Provider):
    """A local provider answering with scripted canonical blocks; records every request it gets."""

    local = True

    def __init__(self) -> None:
        self.name = "higgs"
        self.models = ("local-model",)
        self.blocks: list[ContentBlock] = [TextBlock(text="Hello from the local model.")]
        self.stop_reason = "end_turn"
        self.requests: list[Any] = []

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, owned_by="higgs", kind="local", context_length=4096) for m in self.models]

    def serves(self, model: str) -> bool:
        return model in self.models

    async def chat(self, request: ChatRequest, call: CallContext) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(model=request.model, content=list(self.blocks), stop_reason=self.stop_reason,
                            usage=Usage(input_tokens=11, output_tokens=7))

    async def chat_stream(self, request: ChatRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        yield StreamStart(model=request.model, usage=Usage(input_tokens=11))
        for index, block in enumerate(self.blocks):
            if isinstance(block, TextBlock):
                yield BlockStart(index=index, block=TextBlock(text=""))
                for i, word in enumerate(block.text.split(" ")):
                    yield BlockDelta(index=index, delta=TextDelta(text=word if i == 0 else " " + word))
            elif isinstance(block, ThinkingBlock):
                yield BlockStart(index=index, block=ThinkingBlock(thinking=""))
                yield BlockDelta(index=index, delta=ThinkingDelta(thinking=block.thinking))
            elif isinstance(block, ToolUseBlock):
                yield BlockStart(index=index, block=block.model_copy(update={"input": {}}))
                args = json.dumps(block.input)
                for cut in range(0, len(args), 4):
                    yield BlockDelta(index=index, delta=ToolArgsDelta(partial_json=args[cut:cut + 4]))
            yield BlockStop(index=index)
        yield StreamFinish(stop_reason=self.stop_reason, usage=Usage(input_tokens=11, output_tokens=7))

    async def complete(self, request: CompletionRequest, call: CallContext) -> CompletionResponse:
        self.requests.append(request)
        return CompletionResponse(model=request.model, choices=[CompletionChoice(text=" raw continuation")],
                                  usage=Usage(input_tokens=3, output_tokens=2))

    async def complete_stream(self, request: CompletionRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        yield StreamStart(model=request.model)
        for piece in (" raw", " continuation"):
            yield BlockDelta(index=0, delta=TextDelta(text=piece))
        yield StreamFinish(usage=Usage(input_tokens=3, output_tokens=2))

    async def embed(self, request: EmbeddingRequest, call: CallContext) -> EmbeddingResponse:
        self.requests.append(request)
        return EmbeddingResponse(model=request.model, data=[[float(len(str(t))), 0.5] for t in request.input],
                                 usage=Usage(input_tokens=len(request.input)))


class RemotePlugin:
    """Registers the kernel's ``RemoteProvider`` as kind ``remote`` for every wire format."""

    @hookimpl
    def higgs_providers(self) -> list[ProviderSpec]:
        return [ProviderSpec(name="remote", factory=RemoteProvider, formats=("openai", "anthropic", "ollama"))]


REMOTE = ("test-remote", RemotePlugin())


class OllamaUpstream:
    """A fake Ollama server (``/api/chat``, ``/api/embed``) on 127.0.0.1 that records request bodies."""

    def __init__(self) -> None:
        self.text = "Hi from Ollama upstream"
        self.call_tool = False
        self.bodies: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> OllamaUpstream:
        app = web.Application()
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/embed", self.embed)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if body["model"] == "missing":
            return web.json_response({"error": "model 'missing' not found"}, status=404)
        base = {"model": body["model"], "created_at": "2025-01-01T00:00:00Z"}
        final = {**base, "done": True, "done_reason": "stop", "total_duration": 5, "load_duration": 1,
                 "prompt_eval_count": 9, "prompt_eval_duration": 2, "eval_count": 4, "eval_duration": 2}
        if self.call_tool:
            call = {"function": {"name": body["tools"][0]["function"]["name"], "arguments": {"city": "Oslo"}}}
            lines = [{**base, "message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False}]
        else:
            words = [w if i == 0 else " " + w for i, w in enumerate(self.text.split(" "))]
            lines = [{**base, "message": {"role": "assistant", "content": w}, "done": False} for w in words]
        final["message"] = {"role": "assistant", "content": ""}
        if not body.get("stream", True):
            content = "".join(line["message"]["content"] for line in lines)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if self.call_tool:
                message["tool_calls"] = lines[0]["message"]["tool_calls"]
            return web.json_response({**final, "message": message})
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)
        for line in [*lines, final]:
            await response.write(json.dumps(line).encode() + b"\n")
        await response.write_eof()
        return response

    async def embed(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        return web.json_response({"model": body["model"], "embeddings": [[0.1, 0.2, 0.3] for _ in body["input"]],
                                  "prompt_eval_count": 4})


@pytest.fixture
def local() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
async def ollama_upstream() -> AsyncIterator[OllamaUpstream]:
    async with OllamaUpstream() as fake:
        yield fake


Gateway = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def gateway(local: ScriptedProvider) -> Gateway:
    """``async with gateway(config) as url``: the real app with this plugin and the scripted local model."""

    @asynccontextmanager
    async def run(config: dict[str, Any] | None = None) -> AsyncIterator[str]:
        app = build_app(config or {}, providers={"higgs": local}, plugins=[PLUGIN, REMOTE])
        async with serve_app(app) as url:
            yield url

    return run


@pytest.fixture
def remote_config() -> Callable[..., dict[str, Any]]:
    """The ``remote_config(upstream, fmt)`` helper."""
    return _remote_config


def _remote_config(url: str, fmt: str) -> dict[str, Any]:
    """Route every non-local model to ``url`` speaking ``fmt``."""
    return {"provider": {"up": {"kind": "remote", "url": url, "format": fmt}}, "default": {"provider": "up"}}
