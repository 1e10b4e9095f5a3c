"""Fixtures: the real gateway app with this plugin, a scripted local provider and loopback fake upstreams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import higgs_format_responses
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
    ContentBlock,
    ErrorInfo,
    ModelInfo,
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
)
from higgs.remote import RemoteProvider
from higgs.specs import ProviderSpec
from higgs.testing import build_app, serve_app

PLUGIN = ("responses-format", higgs_format_responses)


class ScriptedProvider(Provider):
    """A local provider answering with scripted canonical blocks; records every request it gets."""

    local = True

    def __init__(self, models: tuple[str, ...] = ("local-model",)) -> None:
        self.name = "higgs"
        self.models = models
        self.blocks: list[ContentBlock] = [TextBlock(text="Hello from the local model.")]
        self.stop_reason = "end_turn"
        self.fail_midstream: ErrorInfo | None = None  # sent as a StreamError after the first delta
        self.requests: list[ChatRequest] = []

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, owned_by="higgs", kind="local") for m in self.models]

    def serves(self, model: str) -> bool:
        return model in self.models

    async def chat(self, request: ChatRequest, call: CallContext) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(model=request.model, content=list(self.blocks), stop_reason=self.stop_reason,
                            usage=Usage(input_tokens=11, output_tokens=7, reasoning_tokens=2))

    async def count_tokens(self, request: ChatRequest, call: CallContext) -> int:
        self.requests.append(request)
        return sum(len(m.text().split()) for m in request.messages) + len(request.system_text().split())

    async def chat_stream(self, request: ChatRequest, call: CallContext) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        yield StreamStart(model=request.model, usage=Usage(input_tokens=11))
        for index, block in enumerate(self.blocks):
            if isinstance(block, TextBlock):
                yield BlockStart(index=index, block=TextBlock(text=""))
                for word in block.text.split(" "):
                    piece = word if block.text.startswith(word) else " " + word
                    yield BlockDelta(index=index, delta=TextDelta(text=piece))
                    if self.fail_midstream is not None:
                        yield StreamError(error=self.fail_midstream)
                        return
            elif isinstance(block, ThinkingBlock):
                yield BlockStart(index=index, block=ThinkingBlock(thinking=""))
                yield BlockDelta(index=index, delta=ThinkingDelta(thinking=block.thinking))
            elif isinstance(block, ToolUseBlock):
                yield BlockStart(index=index, block=block.model_copy(update={"input": {}}))
                args = json.dumps(block.input)
                for cut in range(0, len(args), 5):
                    yield BlockDelta(index=index, delta=ToolArgsDelta(partial_json=args[cut:cut + 5]))
            yield BlockStop(index=index)
        yield StreamFinish(stop_reason=self.stop_reason, usage=Usage(input_tokens=11, output_tokens=7))


class RemotePlugin:
    """Registers the kernel's ``RemoteProvider`` as kind ``remote`` for every wire format."""

    @hookimpl
    def higgs_providers(self) -> list[ProviderSpec]:
        return [ProviderSpec(name="remote", factory=RemoteProvider, formats=("openai", "anthropic", "responses"))]


REMOTE = ("test-remote", RemotePlugin())


class ToolUpstream:
    """A fake upstream for three formats (OpenAI chat, Anthropic messages, Responses) on 127.0.0.1.

    It answers ``text``, or, with ``call_tool`` set, a call to the first tool the request defines with
    ``arguments``. Every request body is recorded in ``bodies``.
    """

    def __init__(self) -> None:
        self.text = "Hi from upstream"
        self.call_tool = False
        self.arguments: dict[str, Any] = {"command": "ls"}
        self.tool: str | None = None  # the tool to call (None = the first defined)
        self.error: tuple[int, dict[str, Any]] | None = None  # answer every request with this error
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ToolUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.openai)
        app.router.add_post("/v1/messages", self.anthropic)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/api/chat", self.ollama)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.bodies.append(body)
        self.paths.append(request.path)
        return body

    def words(self) -> list[str]:
        """``text`` in streamed pieces (each word after the first keeps its leading space)."""
        return [w if i == 0 else " " + w for i, w in enumerate(self.text.split(" "))]

    def _tool_name(self, body: dict[str, Any]) -> str:
        if self.tool is not None:
            return self.tool
        tool = body["tools"][0]
        return tool.get("function", tool)["name"]

    @staticmethod
    async def _sse(request: web.Request, events: list[str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event.encode())
        await response.write_eof()
        return response

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if self.error is not None:
            return web.json_response(self.error[1], status=self.error[0])
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        if self.call_tool:
            call = {"id": "call_up1", "type": "function",
                    "function": {"name": self._tool_name(body), "arguments": json.dumps(self.arguments)}}
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": self.text}, "stop"
        if not body.get("stream"):
            return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                                      "model": body["model"],
                                      "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                      "usage": usage})
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        if self.call_tool:
            call = message["tool_calls"][0]
            chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}}]}}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": call["function"]["arguments"]}}]}}]})
        else:
            chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w}}]}
                       for w in self.words()]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        chunks.append({**base, "choices": [], "usage": usage})
        return await self._sse(request, [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"])

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if self.error is not None:
            return web.json_response(self.error[1], status=self.error[0])
        if self.call_tool:
            block: dict[str, Any] = {"type": "tool_use", "id": "toolu_up1", "name": self._tool_name(body),
                                     "input": self.arguments}
            stop = "tool_use"
        else:
            block, stop = {"type": "text", "text": self.text}, "end_turn"
        message = {"id": "msg_up1", "type": "message", "role": "assistant", "model": body["model"],
                   "content": [block], "stop_reason": stop, "stop_sequence": None,
                   "usage": {"input_tokens": 9, "output_tokens": 4}}
        if not body.get("stream"):
            return web.json_response(message)

        def ev(name: str, payload: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"

        start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 9, "output_tokens": 0}}
        events = [ev("message_start", {"message": start})]
        if self.call_tool:
            events.append(ev("content_block_start", {"index": 0, "content_block": {**block, "input": {}}}))
            events.append(ev("content_block_delta", {"index": 0, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(self.arguments)}}))
        else:
            events.append(ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
            events.append(ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": self.text}}))
        events.append(ev("content_block_stop", {"index": 0}))
        events.append(ev("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                           "usage": {"output_tokens": 4}}))
        events.append(ev("message_stop", {}))
        return await self._sse(request, events)

    async def ollama(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if self.error is not None:
            return web.json_response(self.error[1], status=self.error[0])
        base = {"model": body["model"], "created_at": "2025-01-01T00:00:00Z"}
        if self.call_tool:
            call = {"function": {"name": self._tool_name(body), "arguments": self.arguments}}
            lines = [{**base, "message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False}]
        else:
            lines = [{**base, "message": {"role": "assistant", "content": w}, "done": False} for w in self.words()]
        final = {**base, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                 "prompt_eval_count": 9, "eval_count": 4}
        if not body.get("stream", True):
            message = {"role": "assistant", "content": self.text if not self.call_tool else ""}
            if self.call_tool:
                message["tool_calls"] = lines[0]["message"]["tool_calls"]
            return web.json_response({**final, "message": message})
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)
        for line in [*lines, final]:
            await response.write(json.dumps(line).encode() + b"\n")
        await response.write_eof()
        return response

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if self.error is not None:
            return web.json_response(self.error[1], status=self.error[0])
        if self.call_tool:
            item: dict[str, Any] = {"type": "function_call", "id": "fc_up1", "call_id": "call_up1",
                                    "name": self._tool_name(body), "arguments": json.dumps(self.arguments),
                                    "status": "completed"}
        else:
            item = {"type": "message", "id": "msg_up1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text, "annotations": []}]}
        usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}
        response = {"id": "resp_up1", "object": "response", "created_at": 1, "status": "completed",
                    "model": body["model"], "output": [item], "usage": usage}
        if not body.get("stream"):
            return web.json_response(response)
        seq = iter(range(100))

        def ev(payload: dict[str, Any]) -> str:
            payload = {**payload, "sequence_number": next(seq)}
            return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"

        events = [ev({"type": "response.created", "response": {**response, "status": "in_progress", "output": []}})]
        if self.call_tool:
            events.append(ev({"type": "response.output_item.added", "output_index": 0,
                              "item": {**item, "arguments": "", "status": "in_progress"}}))
            events.append(ev({"type": "response.function_call_arguments.delta", "output_index": 0,
                              "item_id": "fc_up1", "delta": item["arguments"]}))
        else:
            events.append(ev({"type": "response.output_item.added", "output_index": 0,
                              "item": {**item, "content": [], "status": "in_progress"}}))
            events.append(ev({"type": "response.content_part.added", "output_index": 0, "content_index": 0,
                              "item_id": "msg_up1", "part": {"type": "output_text", "text": ""}}))
            events += [ev({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
                           "item_id": "msg_up1", "delta": w}) for w in self.words()]
            events.append(ev({"type": "response.content_part.done", "output_index": 0, "content_index": 0,
                              "item_id": "msg_up1", "part": item["content"][0]}))
        events.append(ev({"type": "response.output_item.done", "output_index": 0, "item": item}))
        events.append(ev({"type": "response.completed", "response": response}))
        return await self._sse(request, events)


@pytest.fixture
async def upstream() -> AsyncIterator[ToolUpstream]:
    async with ToolUpstream() as fake:
        yield fake


@pytest.fixture
def local() -> ScriptedProvider:
    return ScriptedProvider()


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


def _remote_config(fake: ToolUpstream, fmt: str) -> dict[str, Any]:
    """Route every non-local model to ``fake`` speaking ``fmt``."""
    return {"provider": {"up": {"kind": "remote", "url": fake.url, "format": fmt}}, "default": {"provider": "up"}}
