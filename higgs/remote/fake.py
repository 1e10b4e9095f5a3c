"""A scriptable fake upstream speaking the OpenAI, Anthropic and Ollama wire formats on 127.0.0.1.

Used by the provider plugins' tests, ``tests/providers`` and ``bench/proxy.py`` (``python -m
higgs.remote.fake --port 9000``). It follows the public wire formats (chat completions with SSE chunks and
``[DONE]``; messages with named SSE events; Ollama's ``/api/chat`` NDJSON lines) and records every request
it receives, so tests can check headers and bodies exactly. ``script`` holds one-shot behaviours consumed
in order: errors with headers, delays, streams that die mid-way or crawl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_TEXT = "Hello from the fake upstream!"


@dataclass
class Behaviour:
    """One scripted answer. ``status`` >= 400 answers ``body`` (JSON) with ``headers``.

    Attributes:
        status: HTTP status; 200 answers normally.
        body: error body (dict) for ``status`` >= 400.
        headers: extra response headers (e.g. ``retry-after``).
        delay: seconds to wait before answering (timeouts).
        die_after: for streams, close the connection after this many events.
        error_after: for streams, send the format's error event after this many events and end the stream.
        raw: answer these bytes with status 200 instead of a well-formed body (garbage tests).
        chunk_delay: for streams, seconds between events (slow streams, client disconnects).
        text: the answer text instead of the default.
        path: only requests to this path consume the behaviour (None = any).
    """

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    die_after: int | None = None
    error_after: int | None = None
    raw: bytes | None = None
    chunk_delay: float = 0.0
    text: str | None = None
    path: str | None = None


@dataclass
class Recorded:
    """A request the fake received."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class FakeUpstream:
    """The fake server. Use ``async with FakeUpstream() as fake:`` and point a provider at ``fake.url``."""

    def __init__(self, models: tuple[str, ...] = ("gpt-fake", "claude-fake"), chunk_words: int = 1) -> None:
        self.models = models
        self.chunk_words = chunk_words
        self.text = DEFAULT_TEXT
        self.script: deque[Behaviour] = deque()
        self.requests: list[Recorded] = []
        self.sent: list[bytes] = []  # each response's body bytes exactly as written
        self.aborted = 0  # streams cut short because the client went away
        self.events_sent = 0
        self.record = True
        self.url = ""
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/completions", self._openai_completions)
        app.router.add_post("/v1/embeddings", self._openai_embeddings)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/v1/messages/count_tokens", self._anthropic_count)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/api/tags", self._ollama_tags)
        app.router.add_post("/api/chat", self._ollama_chat)
        return app

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port); returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        address = self._runner.addresses[0]
        self.url = f"http://{host}:{address[1]}"
        return self.url

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing ----------------------------------------------------------------------------------
    async def _begin(self, request: web.Request) -> tuple[Behaviour, bytes]:
        body = await request.read()
        if self.record:
            self.requests.append(Recorded(request.method, request.path_qs, list(request.headers.items()), body))
        behaviour = Behaviour()
        if self.script and self.script[0].path in (None, request.path):
            behaviour = self.script.popleft()
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        return behaviour, body

    def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        data = json.dumps(payload).encode()
        if self.record:
            self.sent.append(data)
        return web.Response(body=data, status=status, content_type="application/json", headers=headers)

    async def _stream(self, request: web.Request, events: list[bytes], behaviour: Behaviour,
                      error_event: bytes = b"", content_type: str = "text/event-stream") -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": content_type, "cache-control": "no-cache",
                                               "x-fake-upstream": "1", **behaviour.headers})
        await response.prepare(request)
        written = bytearray()
        try:
            for i, event in enumerate(events):
                if behaviour.error_after is not None and i >= behaviour.error_after:
                    await response.write(error_event)
                    written += error_event
                    break
                if behaviour.die_after is not None and i >= behaviour.die_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if behaviour.chunk_delay:
                    await asyncio.sleep(behaviour.chunk_delay)
                await response.write(event)
                written += event
                self.events_sent += 1
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted += 1
            raise
        finally:
            if self.record:
                self.sent.append(bytes(written))
        return response

    def _words(self, text: str) -> list[str]:
        words = text.split(" ")
        step = max(1, self.chunk_words)
        return [" ".join(words[i:i + step]) + (" " if i + step < len(words) else "")
                for i in range(0, len(words), step)]

    @staticmethod
    def _error(behaviour: Behaviour, anthropic: bool) -> dict[str, Any]:
        if behaviour.body is not None:
            return behaviour.body
        if anthropic:
            kind = {429: "rate_limit_error", 529: "overloaded_error", 401: "authentication_error"}.get(
                behaviour.status, "api_error" if behaviour.status >= 500 else "invalid_request_error")
            return {"type": "error", "error": {"type": kind, "message": f"fake error {behaviour.status}"}}
        kind = "rate_limit_exceeded" if behaviour.status == 429 else "server_error"
        return {"error": {"message": f"fake error {behaviour.status}", "type": kind, "param": None, "code": None}}

    # -- OpenAI ------------------------------------------------------------------------------------
    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        behaviour, raw = await self._begin(request)
        if behaviour.status >= 400:
            return self._json(self._error(behaviour, False), behaviour.status, behaviour.headers)
        if behaviour.raw is not None:
            return web.Response(body=behaviour.raw, content_type="application/json")
        body = json.loads(raw)
        model = body.get("model", "unknown")
        text = behaviour.text or self.text
        usage = {"prompt_tokens": 12, "completion_tokens": len(text.split()), "total_tokens": 12 + len(text.split())}
        created = int(time.time())
        cid = "chatcmpl-fake123"
        if not body.get("stream"):
            return self._json({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "system_fingerprint": "fp_fake",
            }, headers=behaviour.headers)

        def chunk(delta: dict[str, Any], finish: str | None = None, with_usage: Any = None) -> bytes:
            payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "system_fingerprint": "fp_fake",
                       "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if with_usage is not None:
                payload["usage"] = with_usage
            return f"data: {json.dumps(payload)}\n\n".encode()

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": word}) for word in self._words(text)]
        events.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": usage}
            events.append(f"data: {json.dumps(final)}\n\n".encode())
        events.append(b"data: [DONE]\n\n")
        error = {"error": {"message": "fake mid-stream failure", "type": "server_error", "param": None, "code": None}}
        return await self._stream(request, events, behaviour, f"data: {json.dumps(error)}\n\n".encode())

    async def _openai_completions(self, request: web.Request) -> web.StreamResponse:
        behaviour, raw = await self._begin(request)
        if behaviour.status >= 400:
            return self._json(self._error(behaviour, False), behaviour.status, behaviour.headers)
        body = json.loads(raw)
        model, text, created = body.get("model", "unknown"), behaviour.text or self.text, int(time.time())
        usage = {"prompt_tokens": 3, "completion_tokens": len(text.split()), "total_tokens": 3 + len(text.split())}
        if not body.get("stream"):
            return self._json({"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                               "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                               "usage": usage})

        def chunk(piece: str, finish: str | None) -> bytes:
            payload = {"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(payload)}\n\n".encode()

        events = [chunk(word, None) for word in self._words(text)] + [chunk("", "stop"), b"data: [DONE]\n\n"]
        return await self._stream(request, events, behaviour)

    async def _openai_embeddings(self, request: web.Request) -> web.Response:
        behaviour, raw = await self._begin(request)
        if behaviour.status >= 400:
            return self._json(self._error(behaviour, False), behaviour.status, behaviour.headers)
        body = json.loads(raw)
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [{"object": "embedding", "index": i, "embedding": [float(len(str(t))), 0.5, -0.25]}
                for i, t in enumerate(texts)]
        return self._json({"object": "list", "data": data, "model": body.get("model", "unknown"),
                           "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}})

    async def _models(self, request: web.Request) -> web.Response:
        await self._begin(request)
        return self._json({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake", "type": "model",
             "display_name": m, "created_at": "2024-01-01T00:00:00Z"} for m in self.models]})

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        await self._begin(request)
        return self._json({"models": [{"name": m, "model": m, "size": 1, "digest": "0" * 12} for m in self.models]})

    # -- Anthropic ---------------------------------------------------------------------------------
    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        behaviour, raw = await self._begin(request)
        if behaviour.status >= 400:
            return self._json(self._error(behaviour, True), behaviour.status, behaviour.headers)
        if behaviour.raw is not None:
            return web.Response(body=behaviour.raw, content_type="application/json")
        body = json.loads(raw)
        model = body.get("model", "unknown")
        text = behaviour.text or self.text
        out_tokens = len(text.split())
        mid = "msg_fake123"
        if not body.get("stream"):
            return self._json({
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": out_tokens},
            }, headers=behaviour.headers)

        def event(name: str, payload: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()

        events = [
            event("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}),
            event("ping", {"type": "ping"}),
        ]
        events += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": w}})
                   for w in self._words(text)]
        events += [
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                       "stop_sequence": None},
                                    "usage": {"output_tokens": out_tokens}}),
            event("message_stop", {"type": "message_stop"}),
        ]
        error = event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        return await self._stream(request, events, behaviour, error)

    # -- Ollama (native) ---------------------------------------------------------------------------
    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        """``/api/chat``: NDJSON lines (one per word), then the ``done`` line with the token counts."""
        behaviour, raw = await self._begin(request)
        if behaviour.status >= 400:
            return self._json(behaviour.body or {"error": f"fake error {behaviour.status}"}, behaviour.status,
                              behaviour.headers)
        body = json.loads(raw)
        base = {"model": body.get("model", "unknown"), "created_at": "2025-01-01T00:00:00Z"}
        text = behaviour.text or self.text
        final = {**base, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                 "total_duration": 1000, "prompt_eval_count": 12, "eval_count": len(text.split())}
        if not body.get("stream", True):
            return self._json({**final, "message": {"role": "assistant", "content": text}})
        lines = [json.dumps({**base, "message": {"role": "assistant", "content": w}, "done": False}).encode() + b"\n"
                 for w in self._words(text)]
        lines.append(json.dumps(final).encode() + b"\n")
        error = json.dumps({"error": "fake mid-stream failure"}).encode() + b"\n"
        return await self._stream(request, lines, behaviour, error, content_type="application/x-ndjson")

    async def _anthropic_count(self, request: web.Request) -> web.Response:
        behaviour, _ = await self._begin(request)
        if behaviour.status >= 400:
            return self._json(self._error(behaviour, True), behaviour.status, behaviour.headers)
        return self._json({"input_tokens": 42})


def main() -> None:
    """Run the fake upstream until interrupted (``python -m higgs.remote.fake --port 9000``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--words", type=int, default=1, help="words per stream chunk")
    parser.add_argument("--text", default=None, help="answer text")
    args = parser.parse_args()
    fake = FakeUpstream(chunk_words=args.words)
    fake.record = False
    fake.text = args.text or DEFAULT_TEXT
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
