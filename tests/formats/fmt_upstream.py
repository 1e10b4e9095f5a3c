"""A strict fake upstream for translation tests: records each request, checks it against the vendor's rules.

It speaks both wire formats (``/v1/chat/completions`` and ``/v1/messages``) with hand-written payloads (not
higgs's own renderers, so the tests do not check higgs against itself), answers from a script, and collects
every rule a received request breaks in ``problems``.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
ANTHROPIC_TOP = {"model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream", "temperature",
                 "top_k", "top_p", "tools", "tool_choice", "thinking", "service_tier", "container",
                 "context_management", "mcp_servers"}
OPENAI_TOP = {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
              "max_completion_tokens", "stop", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
              "logit_bias", "logprobs", "top_logprobs", "n", "user", "reasoning_effort", "stream", "stream_options",
              "response_format", "metadata", "store", "service_tier", "modalities", "prediction"}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}


@dataclass
class Reply:
    """What the fake answers next. ``stop`` is in the upstream's own vocabulary."""

    text: str | None = "Hello from upstream"
    thinking: str | None = None
    tools: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stop: str | None = None
    input_tokens: int = 11
    cached_tokens: int = 0
    output_tokens: int = 7
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fail_mid_stream: bool = False


class StrictUpstream:
    """Loopback upstream: ``received`` holds ``(path, body, headers)``, ``problems`` the broken rules."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.problems: list[str] = []
        self.script: list[Reply] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.received[-1][1]

    async def __aenter__(self) -> StrictUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> tuple[dict[str, Any], Reply]:
        body = await request.json()
        self.received.append((request.path, body, dict(request.headers)))
        return body, self.script.pop(0) if self.script else Reply()

    # -- Anthropic ----------------------------------------------------------------------------------
    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._receive(request)
        self.problems += [f"anthropic: {p}" for p in anthropic_problems(body, dict(request.headers))]
        if reply.status != 200:
            return web.json_response(reply.error or {"type": "error", "error": {"type": "api_error", "message": "x"}},
                                     status=reply.status, headers=reply.headers)
        blocks: list[dict[str, Any]] = []
        if reply.thinking:
            blocks.append({"type": "thinking", "thinking": reply.thinking, "signature": f"sig{len(reply.thinking)}"})
        if reply.text:
            blocks.append({"type": "text", "text": reply.text})
        blocks += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in reply.tools]
        stop = reply.stop or ("tool_use" if reply.tools else "end_turn")
        usage = {"input_tokens": reply.input_tokens - reply.cached_tokens, "output_tokens": reply.output_tokens,
                 "cache_read_input_tokens": reply.cached_tokens, "cache_creation_input_tokens": 0}
        if not body.get("stream"):
            return web.json_response({"id": "msg_fake01", "type": "message", "role": "assistant",
                                      "model": body["model"], "content": blocks, "stop_reason": stop,
                                      "stop_sequence": None, "usage": usage})
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"message": {"id": "msg_fake01", "type": "message", "role": "assistant",
                                           "model": body["model"], "content": [], "stop_reason": None,
                                           "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}),
            ("ping", {})]
        for index, block in enumerate(blocks):
            if block["type"] == "thinking":
                start, deltas = {"type": "thinking", "thinking": ""}, [
                    {"type": "thinking_delta", "thinking": part} for part in _halves(block["thinking"])] + [
                    {"type": "signature_delta", "signature": block["signature"]}]
            elif block["type"] == "text":
                start, deltas = {"type": "text", "text": ""}, [
                    {"type": "text_delta", "text": part} for part in _halves(block["text"])]
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": part}
                          for part in ["", *_halves(json.dumps(block["input"]))]]
            events.append(("content_block_start", {"index": index, "content_block": start}))
            events += [("content_block_delta", {"index": index, "delta": d}) for d in deltas]
            if reply.fail_mid_stream:
                events.append(("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
                break
            events.append(("content_block_stop", {"index": index}))
        else:
            events.append(("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                             "usage": {"output_tokens": reply.output_tokens}}))
            events.append(("message_stop", {}))
        return await _stream(request, [f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"
                                       for name, data in events])

    # -- OpenAI -------------------------------------------------------------------------------------
    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._receive(request)
        self.problems += [f"openai: {p}" for p in openai_problems(body)]
        if reply.status != 200:
            return web.json_response(reply.error or {"error": {"message": "x", "type": "server_error", "param": None,
                                                               "code": None}},
                                     status=reply.status, headers=reply.headers)
        calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                 for i, n, a in reply.tools]
        finish = reply.stop or ("tool_calls" if calls else "stop")
        usage = {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                 "total_tokens": reply.input_tokens + reply.output_tokens,
                 "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
                 "completion_tokens_details": {"reasoning_tokens": 3 if reply.thinking else 0}}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
            if reply.thinking:
                message["reasoning_content"] = reply.thinking
            if calls:
                message["tool_calls"] = calls
            return web.json_response({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                                      "model": body["model"], "choices": [{"index": 0, "message": message,
                                                                           "logprobs": None, "finish_reason": finish}],
                                      "usage": usage})

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            return "data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                          "created": 1700000000, "model": body["model"],
                                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}) \
                + "\n\n"

        lines = [chunk({"role": "assistant", "content": ""})]
        lines += [chunk({"reasoning_content": part}) for part in _halves(reply.thinking or "")]
        lines += [chunk({"content": part}) for part in _halves(reply.text or "")]
        for slot, call in enumerate(calls):
            lines.append(chunk({"tool_calls": [{"index": slot, "id": call["id"], "type": "function",
                                                "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            lines += [chunk({"tool_calls": [{"index": slot, "function": {"arguments": part}}]})
                      for part in _halves(call["function"]["arguments"])]
        if reply.fail_mid_stream:
            lines.append("data: " + json.dumps({"error": {"message": "upstream exploded", "type": "server_error",
                                                          "param": None, "code": None}}) + "\n\n")
        else:
            lines.append(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                lines.append("data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                                    "created": 1700000000, "model": body["model"], "choices": [],
                                                    "usage": usage}) + "\n\n")
            lines.append("data: [DONE]\n\n")
        return await _stream(request, lines)


def _halves(text: str) -> list[str]:
    middle = len(text) // 2
    return [part for part in (text[:middle], text[middle:]) if part]


async def _stream(request: web.Request, events: list[str]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        raw = event.encode()
        for cut in range(0, len(raw), 13):  # awkward network boundaries, mid-character included
            await response.write(raw[cut:cut + 13])
        await asyncio.sleep(0)
    await response.write_eof()
    return response


# -- rule checks ------------------------------------------------------------------------------------


def anthropic_problems(body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    """Rules of the Anthropic Messages API a request body breaks."""
    out = [f"unknown field {k!r}" for k in body if k not in ANTHROPIC_TOP]
    if not {k.lower() for k in headers} >= {"anthropic-version"}:
        out.append("no anthropic-version header")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        out.append("max_tokens missing")
    system = body.get("system")
    if system is not None and not (isinstance(system, str) and system) and not (
            isinstance(system, list) and all(b.get("type") == "text" and b.get("text") for b in system)):
        out.append(f"bad system {system!r}")
    messages = body.get("messages") or []
    if not messages or messages[0]["role"] != "user":
        out.append("first message must be user")
    pending: set[str] = set()
    for i, message in enumerate(messages):
        if i and message["role"] == messages[i - 1]["role"]:
            out.append(f"messages.{i}: roles must alternate")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not content:
            out.append(f"messages.{i}: empty content")
            continue
        results = [b["tool_use_id"] for b in content if b.get("type") == "tool_result"]
        if pending and set(results) != pending:
            out.append(f"messages.{i}: tool_use ids {sorted(pending)} without matching tool_result")
        if results and any(b.get("type") != "tool_result" for b in content[:len(results)]):
            out.append(f"messages.{i}: tool_result blocks must come first")
        pending = set()
        for block in content:
            out += [f"messages.{i}: {p}" for p in _anthropic_block_problems(block)]
            if block.get("type") == "tool_use":
                pending.add(block["id"])
    for tool in body.get("tools") or []:
        if "name" not in tool or ("type" not in tool and "input_schema" not in tool):
            out.append(f"bad tool {tool!r}")
    choice = body.get("tool_choice")
    if choice is not None and choice.get("type") not in ("auto", "any", "tool", "none"):
        out.append(f"bad tool_choice {choice!r}")
    thinking = body.get("thinking")
    if thinking and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens", 0)
        if not 1024 <= budget < body.get("max_tokens", 0):
            out.append(f"thinking budget {budget} must be >= 1024 and < max_tokens")
        if body.get("temperature") not in (None, 1) or "top_k" in body:
            out.append("sampling not allowed with thinking")
    if not 0 <= body.get("temperature", 0) <= 1:
        out.append("temperature outside 0..1")
    return out


def _anthropic_block_problems(block: dict[str, Any]) -> list[str]:
    kind = block.get("type")
    if kind == "text":
        return [] if block.get("text") else ["empty text block"]
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64" and source.get("media_type") in IMAGE_TYPES and source.get("data"):
            return []
        return [] if source.get("type") == "url" and source.get("url") else [f"bad image {block!r}"]
    if kind == "tool_use":
        ok = ANTHROPIC_ID.match(block.get("id", "")) and block.get("name") and isinstance(block.get("input"), dict)
        return [] if ok else [f"bad tool_use {block!r}"]
    if kind == "tool_result":
        problems = [] if ANTHROPIC_ID.match(block.get("tool_use_id", "")) else [f"bad tool_use_id {block!r}"]
        content = block.get("content")
        if isinstance(content, list):
            for inner in content:
                problems += _anthropic_block_problems(inner)
        return problems
    if kind == "thinking":
        return [] if block.get("signature") else ["thinking without signature"]
    if kind in ("redacted_thinking", "document", "server_tool_use", "web_search_tool_result"):
        return []
    return [f"unknown block {kind!r}"]


def openai_problems(body: dict[str, Any]) -> list[str]:
    """Rules of the OpenAI Chat Completions API a request body breaks."""
    out = [f"unknown field {k!r}" for k in body if k not in OPENAI_TOP]
    if "stream_options" in body and not body.get("stream"):
        out.append("stream_options without stream")
    if not 0 <= body.get("temperature", 0) <= 2:
        out.append("temperature outside 0..2")
    pending: set[str] = set()
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                out.append(f"messages[{i}]: tool message answers no pending call")
            pending.discard(message.get("tool_call_id"))
            if not isinstance(message.get("content"), str):
                out.append(f"messages[{i}]: tool content must be text")
            continue
        if pending:
            out.append(f"messages[{i}]: calls {sorted(pending)} were never answered")
            pending = set()
        if role not in ("system", "developer", "user", "assistant"):
            out.append(f"messages[{i}]: bad role {role!r}")
        content = message.get("content")
        if role == "assistant":
            for call in message.get("tool_calls") or []:
                pending.add(call["id"])
                try:
                    if not isinstance(json.loads(call["function"]["arguments"]), dict):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    out.append(f"messages[{i}]: arguments must be a JSON object string")
            if content is None and not message.get("tool_calls"):
                out.append(f"messages[{i}]: assistant with neither content nor tool_calls")
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    if not str(part["image_url"].get("url", "")).startswith(("data:image/", "http")):
                        out.append(f"messages[{i}]: bad image_url")
                elif part.get("type") != "text":
                    out.append(f"messages[{i}]: bad part {part.get('type')!r}")
        elif not isinstance(content, str):
            out.append(f"messages[{i}]: content must be a string or parts")
        if set(message) - {"role", "content", "tool_calls", "name"}:
            out.append(f"messages[{i}]: unknown keys {sorted(set(message) - {'role', 'content', 'tool_calls'})}")
    if pending:
        out.append(f"calls {sorted(pending)} were never answered")
    return out
