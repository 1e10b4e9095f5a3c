"""The gateway pipeline through real HTTP: routing headers, fallback, streams, pass-through, the max_tokens
cap, request records, /v1/models, /v1/system, /health and client disconnects."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import anthropic
import openai
import pytest

from higgs import hookimpl
from higgs.errors import ProviderError
from higgs.testing import FakeProvider, FixedRouter, app_client, build_app, parse_sse, router_plugin, serve_app

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}]}
MESSAGES = {"model": "tiny", "max_tokens": 16, "messages": [{"role": "user", "content": "hello there"}]}


class Records:
    """A plugin collecting ``higgs_request_finished`` records."""

    def __init__(self):
        self.records = []

    @hookimpl
    def higgs_request_finished(self, record):
        self.records.append(record)


def overloaded(retryable=True):
    return ProviderError(503, "overloaded", "upstream overloaded", retryable=retryable)


def fallback_app(first: FakeProvider, second: FakeProvider, records=None):
    plugins = [router_plugin(FixedRouter(["primary", "backup"], rule="pattern:test"))]
    if records is not None:
        plugins.append(records)
    return build_app(providers={"primary": first, "backup": second}, plugins=plugins)


# -- basics -----------------------------------------------------------------------------------------


async def test_health_models_and_system():
    local = FakeProvider(local=True, models=["tiny", "shared"])
    remote = FakeProvider(models=["gpt-x", "shared"])
    app = build_app(providers={"higgs": local, "up": remote})
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            models = [m async for m in client.models.list()]
        assert [(m.id, m.owned_by) for m in models] == [("tiny", "higgs"), ("shared", "higgs"), ("gpt-x", "up")]
        async with http.get(url + "/v1/system") as resp:
            system = await resp.json()
        assert system["version"] and system["pid"] > 0 and system["uptime_s"] >= 0
        assert system["memory"]["rss_bytes"] > 1_000_000
        assert system["providers"]["higgs"]["local"] is True and system["providers"]["up"]["calls"] == 0
        assert {p["name"] for p in system["plugins"]} >= {"openai-format", "anthropic-format", "routing"}
        async with http.head(url + "/v1/models") as resp:  # GET routes answer HEAD, with no body
            assert resp.status == 200 and await resp.read() == b""
    assert local.started and local.closed and remote.closed  # cleanup_ctx ran


async def test_route_headers_and_both_formats_translate():
    records = Records()
    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"])}, plugins=[records])
    async with serve_app(app) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(**CHAT)
            assert raw.headers["x-higgs-provider"] == "higgs" and raw.headers["x-higgs-route"] == "local"
            assert raw.parse().choices[0].message.content == "Hello from the fake provider."
        async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as ant:
            message = await ant.messages.create(**MESSAGES)
            count = await ant.messages.count_tokens(model="tiny", messages=MESSAGES["messages"])
    assert message.content[0].text == "Hello from the fake provider." and message.usage.output_tokens == 5
    assert count.input_tokens == 2
    chat, msg, counted = records.records
    assert (chat.endpoint, chat.format_in, chat.provider, chat.route, chat.routing_method) == (
        "/v1/chat/completions", "openai", "higgs", "local", "local")
    assert chat.status == 200 and chat.local and chat.input_tokens == 2 and chat.output_tokens == 5
    assert chat.latency_ms > 0 and chat.error_type is None
    assert msg.format_in == "anthropic" and counted.endpoint == "/v1/messages/count_tokens"


async def test_unknown_model_is_404_in_the_callers_format():
    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"])})
    async with app_client(app) as client:
        resp = await client.post("/v1/messages", json={**MESSAGES, "model": "ghost"})
        body = await resp.json()
        assert resp.status == 404 and body["error"]["type"] == "not_found_error"
        assert "ghost" in body["error"]["message"] and "tiny" in body["error"]["message"]


async def test_max_tokens_is_clamped_and_filled_for_local_providers():
    local = FakeProvider(local=True, models=["tiny"])
    app = build_app({"server": {"max_tokens": 50}}, providers={"higgs": local})
    async with app_client(app) as client:
        await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1000})
        await client.post("/v1/chat/completions", json=CHAT)
        await client.post("/v1/messages", json={**MESSAGES, "max_tokens": 7})
    assert [request.max_tokens for _, request in local.calls] == [50, 50, 7]


async def test_completions_and_embeddings():
    local = FakeProvider(local=True, models=["tiny"])
    app = build_app(providers={"higgs": local})
    async with serve_app(app) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            completion = await client.completions.create(model="tiny", prompt="once upon")
            embedded = await client.embeddings.create(model="tiny", input=["a", "b"])
    assert completion.choices[0].text == "Hello from the fake provider."
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 8


# -- fallback ---------------------------------------------------------------------------------------


async def test_fallback_to_second_provider_on_retryable_error():
    records = Records()
    first = FakeProvider(models=["tiny"], fail=overloaded())
    second = FakeProvider(models=["tiny"], reply="from the backup")
    app = fallback_app(first, second, records)
    async with serve_app(app) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(**CHAT)
            stream = await client.chat.completions.create(**CHAT, stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert raw.headers["x-higgs-provider"] == "backup" and raw.headers["x-higgs-route"] == "pattern:test"
    assert raw.parse().choices[0].message.content == "from the backup" and streamed == "from the backup"
    assert len(first.calls) == 2 and len(second.calls) == 2
    assert records.records[0].provider == "backup" and records.records[0].extra["attempts"] == 2


async def test_connection_failure_falls_back():
    first = FakeProvider(models=["tiny"], fail=aiohttp.ClientConnectionError("connection refused"))
    second = FakeProvider(models=["tiny"], reply="backup")
    async with app_client(fallback_app(first, second)) as client:
        resp = await client.post("/v1/messages", json=MESSAGES)
        assert resp.status == 200 and resp.headers["x-higgs-provider"] == "backup"


async def test_no_fallback_on_non_retryable_error_and_last_error_wins():
    first = FakeProvider(models=["tiny"], fail=ProviderError(400, "invalid_request", "bad tool schema"))
    second = FakeProvider(models=["tiny"])
    async with app_client(fallback_app(first, second)) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 400 and "bad tool schema" in (await resp.json())["error"]["message"]
        assert second.calls == []
    both_down = fallback_app(FakeProvider(models=["tiny"], fail=overloaded()),
                             FakeProvider(models=["tiny"], fail=ProviderError(529, "overloaded", "still down",
                                                                              retryable=True)))
    async with app_client(both_down) as client:
        resp = await client.post("/v1/messages", json=MESSAGES)
        body = await resp.json()
        assert resp.status == 529 and body["error"]["type"] == "overloaded_error"
        assert "still down" in body["error"]["message"]


# -- streams ----------------------------------------------------------------------------------------


async def test_error_before_first_output_is_a_normal_error_response():
    provider = FakeProvider(local=True, models=["tiny"], fail=ProviderError(429, "rate_limit", "slow down",
                                                                            retry_after=7))
    app = build_app(providers={"higgs": provider})
    async with app_client(app) as client:
        resp = await client.post("/v1/messages", json={**MESSAGES, "stream": True})
        body = await resp.json()
        assert resp.status == 429 and body["error"]["type"] == "rate_limit_error"
        assert resp.headers["retry-after"] == "7"


async def test_error_mid_stream_becomes_the_formats_error_event():
    records = Records()
    provider = FakeProvider(local=True, models=["tiny"], fail_midstream=ProviderError(500, "api_error", "boom"))
    app = build_app(providers={"higgs": provider}, plugins=[records])
    async with app_client(app) as client:
        resp = await client.post("/v1/messages", json={**MESSAGES, "stream": True})
        assert resp.status == 200
        events = parse_sse(await resp.read())
        assert events[-1].event == "error" and events[-1].json()["error"]["message"] == "boom"
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        events = parse_sse(await resp.read())
        assert any("boom" in e.data for e in events)
    assert records.records[0].error_type == "api_error" and records.records[0].stream


async def test_stream_is_incremental_and_recorded():
    records = Records()
    provider = FakeProvider(local=True, models=["tiny"], chunk_delay=0.05, reply="one two three four")
    app = build_app(providers={"higgs": provider}, plugins=[records])
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-higgs-provider"] == "higgs"
            first = await resp.content.readuntil(b"\n\n")  # arrives before the stream ends
            assert first.startswith(b"data: ")
            rest = await resp.read()
    assert b"[DONE]" in rest
    record = records.records[0]
    assert record.stream and record.ttft_ms is not None and record.ttft_ms < record.latency_ms
    assert record.output_tokens == 4 and record.tokens_per_s


async def test_client_disconnect_cancels_the_providers_work():
    provider = FakeProvider(local=True, models=["tiny"], chunk_delay=0.5, reply=" ".join(["w"] * 50))
    app = build_app(providers={"higgs": provider})
    async with serve_app(app) as url:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
                await resp.content.readuntil(b"\n\n")
            # leaving the block closes the connection mid-stream
        for _ in range(50):
            if provider.cancelled:
                break
            await asyncio.sleep(0.05)
    assert provider.cancelled == 1


# -- pass-through -----------------------------------------------------------------------------------


async def test_same_format_is_passed_through_with_the_model_rewritten():
    upstream = FakeProvider(models=["gpt-x"], upstream_format="openai")
    router = router_plugin(FixedRouter(["up"], rule="pattern:gpt", rewrite="gpt-x-2024"))
    app = build_app(providers={"up": upstream}, plugins=[router])
    async with app_client(app) as client:
        body = {**CHAT, "model": "gpt-x", "unknown_field": {"kept": True}}
        resp = await client.post("/v1/chat/completions", json=body)
        echoed = await resp.json()
        assert resp.status == 200 and resp.headers["x-higgs-provider"] == "up"
        assert echoed["passthrough"] and echoed["path"] == "/v1/chat/completions"
        assert echoed["body"] == {**body, "model": "gpt-x-2024"}
        # the other format is translated, not passed through
        resp = await client.post("/v1/messages", json={**MESSAGES, "model": "gpt-x"})
        assert (await resp.json())["type"] == "message"
    assert [op for op, _ in upstream.calls] == ["passthrough", "chat"]


async def test_unmodified_body_is_forwarded_byte_for_byte():
    upstream = FakeProvider(models=["gpt-x"], upstream_format="openai")
    seen = []

    async def capture(raw, call):
        seen.append(raw)
        return await FakeProvider.passthrough(upstream, raw, call)

    upstream.passthrough = capture
    app = build_app(providers={"up": upstream}, plugins=[router_plugin(FixedRouter(["up"]))])
    payload = b'{"model":"gpt-x",   "messages":[{"role":"user","content":"hi"}]}'
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions?x=1", data=payload,
                                 headers={"content-type": "application/json", "x-custom": "1"})
        assert resp.status == 200
    assert seen[0].body == payload and seen[0].query == "x=1"
    headers = {k.lower(): v for k, v in seen[0].headers}
    assert headers["x-custom"] == "1" and "host" not in headers and "content-length" not in headers


# -- plugins reach the app --------------------------------------------------------------------------


async def test_configure_app_and_server_lifecycle_hooks():
    events = []

    class Hooks:
        @hookimpl
        def higgs_configure_app(self, app, settings):
            async def ping(request):
                return aiohttp.web.json_response({"pong": True})
            app.router.add_get("/acme/ping", ping)

        @hookimpl
        def higgs_server_started(self, app, settings):
            events.append("started")

        @hookimpl
        def higgs_server_stopping(self, app, settings):
            events.append("stopping")

    app = build_app(providers={"higgs": FakeProvider(local=True)}, plugins=[Hooks()])
    async with app_client(app) as client:
        assert (await (await client.get("/acme/ping")).json()) == {"pong": True}
    assert events == ["started", "stopping"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_failed_requests_are_recorded_too(path):
    records = Records()
    app = build_app({"server": {"api_key": "k"}}, providers={"higgs": FakeProvider(local=True)}, plugins=[records])
    async with app_client(app) as client:
        await client.post(path, data=json.dumps(CHAT))
    assert records.records[0].status == 401 and records.records[0].error_type == "authentication"


async def test_stalled_passthrough_stream_is_closed_after_the_timeout():
    from higgs.interfaces import RawResponse

    upstream = FakeProvider(models=["gpt-x"], upstream_format="openai")
    closed = []

    async def stalling(raw, call):
        async def body():
            yield b"data: {}\n\n"
            await asyncio.sleep(30)
            yield b"never"

        async def close():
            closed.append(True)

        return RawResponse(status=200, headers=[("content-type", "text/event-stream")], body=body(), close=close)

    upstream.passthrough = stalling
    app = build_app({"server": {"timeout": 0.3}}, providers={"up": upstream},
                    plugins=[router_plugin(FixedRouter(["up"]))])
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-x", "stream": True})
        assert resp.status == 200 and await resp.read() == b"data: {}\n\n"
    assert closed == [True]


async def test_the_gateways_own_api_key_is_never_forwarded():
    upstream = FakeProvider(models=["gpt-x"], upstream_format="openai")
    translated = FakeProvider(models=["claude-x"])
    seen = []

    async def capture(raw, call):
        seen.append(dict(raw.headers))
        return await FakeProvider.passthrough(upstream, raw, call)

    upstream.passthrough = capture
    original_chat = translated.chat

    async def chat(request, call):
        seen.append(dict(call.headers))
        return await original_chat(request, call)

    translated.chat = chat
    router = router_plugin(FixedRouter(["up"], models=["gpt-x"]))
    router2 = router_plugin(FixedRouter(["tr"], models=["claude-x"], name="fixed-2"), order=6)
    app = build_app({"server": {"api_key": "gateway-key"}}, providers={"up": upstream, "tr": translated},
                    plugins=[router, router2])
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-x"},
                                 headers={"Authorization": "Bearer gateway-key", "x-upstream-hint": "1"})
        assert resp.status == 200
        resp = await client.post("/v1/messages", json={**MESSAGES, "model": "claude-x"},
                                 headers={"x-api-key": "gateway-key", "anthropic-version": "2023-06-01"})
        assert resp.status == 200
    lowered = [{k.lower(): v for k, v in h.items()} for h in seen]
    assert "authorization" not in lowered[0] and lowered[0]["x-upstream-hint"] == "1"
    assert "x-api-key" not in lowered[1] and lowered[1]["anthropic-version"] == "2023-06-01"
    assert all("gateway-key" not in str(h) for h in seen)


async def test_record_of_an_internal_error_has_status_500():
    records = Records()
    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"], fail=RuntimeError("bug"))},
                    plugins=[records])
    async with app_client(app) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 500
    assert records.records[0].status == 500 and records.records[0].error_type == "api_error"
    assert records.records[0].provider == "higgs"


OPENAI_COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}
ANTHROPIC_STREAM = b"".join(
    f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 13, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ])


async def test_passthrough_records_usage_and_ttft_without_touching_the_bytes():
    from higgs.interfaces import RawResponse

    records = Records()

    def upstream_returning(content_type, payload, fmt):
        provider = FakeProvider(models=["m"], upstream_format=fmt)

        async def passthrough(raw, call):
            async def body():
                yield payload[:20]
                yield payload[20:]
            return RawResponse(status=200, headers=[("content-type", content_type)], body=body())

        provider.passthrough = passthrough
        return provider

    oai = upstream_returning("application/json", json.dumps(OPENAI_COMPLETION).encode(), "openai")
    ant = upstream_returning("text/event-stream", ANTHROPIC_STREAM, "anthropic")
    app = build_app(providers={"oai": oai, "ant": ant}, plugins=[
        records, router_plugin(FixedRouter(["oai"], models=["gpt-x"])),
        router_plugin(FixedRouter(["ant"], models=["claude-x"], name="fixed-2"), order=6)])
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-x"})
        assert await resp.json() == OPENAI_COMPLETION
        resp = await client.post("/v1/messages", json={**MESSAGES, "model": "claude-x", "stream": True})
        assert await resp.read() == ANTHROPIC_STREAM
    first, second = records.records
    assert (first.input_tokens, first.output_tokens, first.format_out) == (11, 7, "openai")
    assert (second.input_tokens, second.output_tokens, second.stream) == (13, 9, True)
    assert second.ttft_ms is not None and second.ttft_ms <= second.latency_ms


async def test_no_fallback_once_bytes_reached_the_client():
    from higgs.interfaces import RawResponse

    first = FakeProvider(models=["gpt-x"], upstream_format="openai")
    second = FakeProvider(models=["gpt-x"], upstream_format="openai")

    async def dying(raw, call):
        async def body():
            yield b"data: {\"partial\": true}\n\n"
            raise aiohttp.ClientConnectionError("upstream went away")
        return RawResponse(status=200, headers=[("content-type", "text/event-stream")], body=body())

    first.passthrough = dying
    app = build_app(providers={"a": first, "b": second}, plugins=[router_plugin(FixedRouter(["a", "b"]))])
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-x", "stream": True})
        assert resp.status == 200 and resp.headers["x-higgs-provider"] == "a"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # the stream ends abruptly: the client can tell it is incomplete
    assert second.calls == []
