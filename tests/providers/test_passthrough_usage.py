"""Pass-through relay: usage read on the side for every format, NDJSON streamed as it comes, format errors.

The upstream is a loopback replay server that writes scripted bytes in scripted pieces; clients are the
official SDKs (``openai``, ``anthropic``, ``ollama``) plus raw aiohttp where the exact bytes matter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import higgs_format_ollama
import higgs_format_ollama.format
import higgs_format_responses
import higgs_format_responses.format
import ollama
import openai
import pytest
from aiohttp import web

from higgs.formats.anthropic import AnthropicFormat
from higgs.formats.openai import OpenAIFormat
from higgs.hookspecs import hookimpl
from higgs.messages import Usage
from higgs.remote import RemoteProvider
from higgs.server.relay import StreamScanner
from higgs.specs import ProviderSpec
from higgs.testing import build_app, serve_app

RESPONSES_STREAM = (Path(higgs_format_responses.__file__).parents[1] / "tests" / "fixtures" / "stream_text.sse")


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def openai_stream() -> bytes:
    """What OpenAI sends with ``include_usage``: ``"usage": null`` on every chunk, then a usage chunk."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up"}
    parts = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}], "usage": None})]
    parts += [sse({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
                   "usage": None}) for w in ("Hello", " there", " friend")]
    parts.append(sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}))
    parts.append(sse({**base, "choices": [], "usage": {
        "prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33,
        "prompt_tokens_details": {"cached_tokens": 16}, "completion_tokens_details": {"reasoning_tokens": 0}}}))
    return b"".join(parts) + b"data: [DONE]\n\n"


def anthropic_stream() -> bytes:
    """A Messages stream whose prompt was mostly read from the prompt cache."""
    return b"".join([
        sse({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0,
                      "output_tokens": 1}}}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start"),
        sse({"type": "ping"}, "ping"),
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "usage is \"usage\""}},
            "content_block_delta"),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 7}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ])


def ollama_lines(words: tuple[str, ...] = ("Hi", " from", " Ollama")) -> list[bytes]:
    base = {"model": "llama-up", "created_at": "2025-01-01T00:00:00Z"}
    lines = [json.dumps({**base, "message": {"role": "assistant", "content": w}, "done": False}).encode() + b"\n"
             for w in words]
    final = {**base, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
             "total_duration": 5, "prompt_eval_count": 9, "eval_count": 4}
    return [*lines, json.dumps(final).encode()]  # Ollama's last line may lack the newline


class Replay:
    """A loopback upstream answering every POST with ``parts`` (written one by one) as ``content_type``."""

    def __init__(self) -> None:
        self.content_type = "text/event-stream"
        self.parts: list[bytes] = []
        self.hold_after: int | None = None  # wait for ``release`` after writing this many parts
        self.release = asyncio.Event()
        self.die_after: int | None = None  # close the connection after this many parts
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": self.content_type})
        await response.prepare(request)
        for index, part in enumerate(self.parts):
            if index == self.die_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if index == self.hold_after:
                await self.release.wait()
            await response.write(part)
        await response.write_eof()
        return response

    async def __aenter__(self) -> Replay:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class Records:
    """Collects ``higgs_request_finished`` records."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    @hookimpl
    def higgs_request_finished(self, record: Any) -> None:
        self.records.append(record)

    async def next(self) -> Any:
        """The next record (records are emitted just after the response ends)."""
        for _ in range(200):
            if self.records:
                return self.records.pop(0)
            await asyncio.sleep(0.01)
        raise AssertionError("no request record")


class RemotePlugin:
    """The kernel's ``RemoteProvider`` as kind ``remote`` for every wire format used here."""

    @hookimpl
    def higgs_providers(self) -> list[ProviderSpec]:
        return [ProviderSpec(name="remote", factory=RemoteProvider,
                             formats=("openai", "anthropic", "ollama", "responses"))]


@pytest.fixture
async def replay() -> AsyncIterator[Replay]:
    async with Replay() as upstream:
        yield upstream


def app_for(upstream: Replay, fmt: str, records: Records) -> web.Application:
    config = {"provider": {"up": {"kind": "remote", "url": upstream.url, "format": fmt, "api_key": "sk-up"}},
              "default": {"provider": "up"}}
    return build_app(config, plugins=[("test-remote", RemotePlugin()), records, ("ollama-format", higgs_format_ollama),
                                      ("responses-format", higgs_format_responses)])


# -- the scanner alone: any split of the bytes gives the same usage --------------------------------------
@pytest.mark.parametrize(("scan", "payload", "expected"), [
    (OpenAIFormat().usage_scan("chat"), openai_stream(), Usage(input_tokens=30, output_tokens=3, cached_tokens=16)),
    (AnthropicFormat().usage_scan("chat"), anthropic_stream(),
     Usage(input_tokens=105, output_tokens=7, cached_tokens=100)),
    (higgs_format_ollama.format.OllamaFormat().usage_scan("chat"), b"".join(ollama_lines()),
     Usage(input_tokens=9, output_tokens=4)),
    (higgs_format_responses.format.ResponsesFormat().usage_scan("chat"), RESPONSES_STREAM.read_bytes(),
     Usage(input_tokens=37, output_tokens=11)),
], ids=["openai", "anthropic", "ollama", "responses"])
async def test_scanner_reads_usage_whatever_the_chunk_boundaries(scan, payload, expected):
    for size in (1, 2, 3, 7, 64, 500, len(payload)):
        scanner = StreamScanner(scan)
        for cut in range(0, len(payload), size):
            scanner.feed(payload[cut:cut + size])
        assert await scanner.result() == expected, size


async def test_scanner_without_usage_events_reports_none():
    scanner = StreamScanner(OpenAIFormat().usage_scan("chat"))
    scanner.feed(b'data: {"choices":[],"usage":null}\n\ndata: [DONE]\n\n')
    assert await scanner.result() is None


# -- end to end, one per format ---------------------------------------------------------------------------
async def test_openai_stream_usage_and_ttft(replay):
    replay.parts = [openai_stream()[i:i + 90] for i in range(0, len(openai_stream()), 90)]
    records = Records()
    async with serve_app(app_for(replay, "openai", records)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client", max_retries=0)
        stream = await client.chat.completions.create(model="gpt-up", stream=True, stream_options={
            "include_usage": True}, messages=[{"role": "user", "content": "hi"}])
        chunks = [c async for c in stream]
        record = await records.next()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there friend"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 30
    assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (30, 3, 16)
    assert record.format_out == "openai" and record.stream and record.ttft_ms is not None
    assert 0 <= record.ttft_ms <= record.latency_ms


async def test_openai_non_stream_chunked_body_usage(replay):
    body = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-up",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}}).encode()
    replay.content_type, replay.parts = "application/json", [body[:40], body[40:]]  # chunked, no length
    records = Records()
    async with serve_app(app_for(replay, "openai", records)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client", max_retries=0)
        reply = await client.chat.completions.create(model="gpt-up", messages=[{"role": "user", "content": "hi"}])
        record = await records.next()
    assert reply.choices[0].message.content == "ok"
    assert (record.input_tokens, record.output_tokens, record.stream, record.ttft_ms) == (11, 1, False, None)


async def test_anthropic_stream_usage_with_cache_reads(replay):
    replay.parts = [anthropic_stream()]
    records = Records()
    async with serve_app(app_for(replay, "anthropic", records)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="client", max_retries=0)
        async with client.messages.stream(model="claude-up", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            final = await stream.get_final_message()
        async with aiohttp.ClientSession() as http, http.post(url + "/v1/messages", json={
                "model": "claude-up", "max_tokens": 5, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as response:
            raw = await response.read()
        records_seen = [await records.next(), await records.next()]
    assert final.content[0].text == 'usage is "usage"' and final.usage.cache_read_input_tokens == 100
    assert raw == anthropic_stream()  # bytes untouched
    for record in records_seen:
        assert (record.input_tokens, record.output_tokens, record.cached_tokens) == (105, 7, 100)
        assert record.ttft_ms is not None


async def test_responses_stream_usage(replay):
    replay.parts = [RESPONSES_STREAM.read_bytes()]
    records = Records()
    async with serve_app(app_for(replay, "responses", records)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client", max_retries=0)
        stream = await client.responses.create(model="gpt-up", input="hi", stream=True)
        events = [e async for e in stream]
        record = await records.next()
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Hi there!"
    assert (record.input_tokens, record.output_tokens, record.format_out) == (37, 11, "responses")


async def test_ollama_ndjson_streams_incrementally_with_usage(replay):
    replay.content_type, replay.parts, replay.hold_after = "application/x-ndjson", ollama_lines(), 1
    records = Records()
    async with serve_app(app_for(replay, "ollama", records)) as url:
        client = ollama.AsyncClient(host=url)
        stream = await client.chat(model="llama-up", stream=True, messages=[{"role": "user", "content": "hi"}])
        # The upstream holds back everything after its first line: that line must reach the client now.
        first = await asyncio.wait_for(anext(stream), 5)
        replay.release.set()
        rest = [part async for part in stream]
        record = await records.next()
    assert first.message.content == "Hi" and not first.done
    assert "".join(p.message.content for p in rest) == " from Ollama" and rest[-1].done
    assert rest[-1].prompt_eval_count == 9 and rest[-1].eval_count == 4
    assert (record.input_tokens, record.output_tokens, record.format_out) == (9, 4, "ollama")
    assert record.ttft_ms is not None


async def test_ollama_upstream_dying_mid_stream_ends_with_an_ndjson_error_line(replay):
    replay.content_type, replay.parts, replay.die_after = "application/x-ndjson", ollama_lines(), 2
    records = Records()
    async with serve_app(app_for(replay, "ollama", records)) as url:
        client = ollama.AsyncClient(host=url)
        stream = await client.chat(model="llama-up", stream=True, messages=[{"role": "user", "content": "hi"}])
        seen = []
        with pytest.raises(ollama.ResponseError) as caught:
            async for part in stream:
                seen.append(part.message.content)
        async with aiohttp.ClientSession() as http, http.post(url + "/api/chat", json={
                "model": "llama-up", "messages": [{"role": "user", "content": "hi"}]}) as response:
            raw = await response.read()
    assert seen == ["Hi", " from"] and "could not be reached" in caught.value.error
    *lines, last = raw.decode().splitlines()
    assert [json.loads(line)["message"]["content"] for line in lines] == ["Hi", " from"]
    assert set(json.loads(last)) == {"error"} and raw.endswith(b"\n")


async def test_openai_upstream_dying_mid_stream_ends_with_an_sse_error_event(replay):
    replay.parts = [openai_stream()[:200], openai_stream()[200:]]
    replay.die_after = 1
    async with serve_app(app_for(replay, "openai", Records())) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client", max_retries=0)
        stream = await client.chat.completions.create(model="gpt-up", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.APIError, match="could not be reached"):
            async for _ in stream:
                pass


async def test_stalled_upstream_stream_ends_with_a_timeout_event_from_the_read_timeout(replay):
    """No per-chunk timer in the gateway: the upstream connection's read timeout ends a stalled stream."""
    replay.parts, replay.hold_after = [openai_stream()[:300], openai_stream()[300:]], 1
    head = openai_stream()[:300]
    head = head[:head.rfind(b"\n\n") + 2]  # the relay holds back the unfinished event
    config = {"provider": {"up": {"kind": "remote", "url": replay.url, "format": "openai", "timeout": 0.4}},
              "default": {"provider": "up"}}
    app = build_app(config, plugins=[("test-remote", RemotePlugin())])
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/chat/completions", json={
                "model": "gpt-up", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as response:
            raw = await asyncio.wait_for(response.read(), 10)
        replay.release.set()
    assert raw.startswith(head)
    error = json.loads(raw[len(head):].removeprefix(b"data: "))
    assert "timed out" in error["error"]["message"]


async def test_anthropic_count_tokens_pass_through_records_the_count(replay):
    replay.content_type, replay.parts = "application/json", [b'{"input_tokens"', b": 42}"]
    records = Records()
    async with serve_app(app_for(replay, "anthropic", records)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="client", max_retries=0)
        count = await client.messages.count_tokens(model="claude-up", messages=[{"role": "user", "content": "hi"}])
        record = await records.next()
    assert count.input_tokens == 42 and (record.input_tokens, record.output_tokens) == (42, 0)


async def test_ollama_client_through_higgs_to_the_fake_ollama_upstream_streams_as_it_comes():
    """``higgs.remote.fake`` as the Ollama upstream, crawling: parts reach the client one by one."""
    from higgs.remote.fake import Behaviour, FakeUpstream

    async with FakeUpstream() as fake:
        fake.script.append(Behaviour(chunk_delay=0.15))
        records = Records()
        app = build_app({"provider": {"up": {"kind": "remote", "url": fake.url, "format": "ollama"}},
                         "default": {"provider": "up"}},
                        plugins=[("test-remote", RemotePlugin()), records, ("ollama-format", higgs_format_ollama)])
        async with serve_app(app) as url:
            client = ollama.AsyncClient(host=url)
            loop = asyncio.get_running_loop()
            arrivals, parts = [], []
            async for part in await client.chat(model="llama-up", stream=True,
                                                messages=[{"role": "user", "content": "hi"}]):
                arrivals.append(loop.time())
                parts.append(part)
            record = await records.next()
    assert "".join(p.message.content for p in parts) == fake.text and parts[-1].done
    assert len(parts) == len(fake.text.split()) + 1
    # Six events 0.15 s apart: relayed one by one, the first arrives long before the last.
    assert arrivals[-1] - arrivals[0] > 0.5
    assert (record.input_tokens, record.output_tokens) == (12, len(fake.text.split()))
