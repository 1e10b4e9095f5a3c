"""The pass-through relay: usage meters (scan and fallback) and the one-write end of a finished stream."""

from __future__ import annotations

import json
import logging

from higgs.formats.anthropic import AnthropicFormat
from higgs.formats.openai import OpenAIFormat
from higgs.hookspecs import hookimpl
from higgs.interfaces import RawResponse, Router
from higgs.messages import Usage
from higgs.server.relay import BodyScanner, StreamScanner, usage_meter
from higgs.testing import FakeProvider, app_client, build_app

ANTHROPIC_STREAM = b"".join(
    f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in [
        ("message_start", {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 13}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hi"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ])


class NoScanFormat(AnthropicFormat):
    """A format that names no usage marker (like a third-party format written before ``usage_scan``)."""

    def usage_scan(self, operation):
        return None


async def test_a_format_without_a_scan_falls_back_to_its_stream_parser():
    meter = usage_meter(NoScanFormat(), "chat", 200, "text/event-stream")
    assert isinstance(meter, BodyScanner)
    for cut in range(0, len(ANTHROPIC_STREAM), 50):
        meter.feed(ANTHROPIC_STREAM[cut:cut + 50])
    assert await meter.result() == Usage(input_tokens=13, output_tokens=9)


async def test_meters_by_status_and_content_type():
    assert usage_meter(OpenAIFormat(), "chat", 429, "application/json") is None
    assert isinstance(usage_meter(OpenAIFormat(), "chat", 200, "text/event-stream; charset=utf-8"), StreamScanner)
    body = usage_meter(OpenAIFormat(), "embedding", 200, "application/json")
    assert isinstance(body, BodyScanner)
    body.feed(b'{"data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}')
    assert await body.result() == Usage(input_tokens=8)
    garbage = usage_meter(OpenAIFormat(), "chat", 200, "application/json")
    garbage.feed(b"not json")
    assert await garbage.result() is None


class FixedRouter(Router):
    name = "fixed"

    async def route(self, query):
        from higgs.interfaces import RouteDecision

        return RouteDecision(providers=("up",), model=query.model, rule="fixed", method="test")


class RouterPlugin:
    @hookimpl
    def higgs_routers(self):
        from higgs.specs import RouterSpec

        return [RouterSpec(name="fixed", factory=lambda settings, services: FixedRouter(), order=5)]


async def test_a_finished_upstream_ends_the_response_with_its_last_chunk(caplog):
    upstream = FakeProvider(models=["gpt-x"], upstream_format="openai")
    parts = [b"data: {\"a\": 1}\n\n", b"data: [DONE]\n\n", b"data: late\n\n"]
    state = {"sent": 0}

    async def passthrough(raw, call):
        async def body():
            for part in parts:
                state["sent"] += 1
                yield part

        # Says "nothing left" after the second part although a third follows: the relay drops it.
        return RawResponse(status=200, headers=[("content-type", "text/event-stream")], body=body(),
                           exhausted=lambda: state["sent"] >= 2, read_timeout=5.0)

    upstream.passthrough = passthrough
    app = build_app(providers={"up": upstream}, plugins=[RouterPlugin()])
    with caplog.at_level(logging.WARNING, logger="higgs.server"):
        async with app_client(app) as client:
            resp = await client.post("/v1/chat/completions", json={
                "model": "gpt-x", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status == 200 and await resp.read() == parts[0] + parts[1]
    assert "after it said it was exhausted" in caplog.text
