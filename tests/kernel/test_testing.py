"""The public test harness: fixtures from the pytest11 plugin, FakeProvider, SSE helpers."""

from __future__ import annotations

import anthropic
import openai

from higgs.testing import FakeProvider, SSEEvent, app_client, build_app, iter_sse, parse_sse


async def test_higgs_client_fixture(higgs_client):
    client = await higgs_client(providers={"higgs": FakeProvider(local=True, models=["tiny"])})
    resp = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "hi"}], "stream": True})
    events = [e async for e in iter_sse(resp.content.iter_any())]
    assert events[-1].data == "[DONE]"
    text = "".join(e.json()["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.json()["choices"])
    assert text == "Hello from the fake provider."


async def test_higgs_server_fixture_with_async_sdk(higgs_server, higgs_app):
    app = higgs_app(providers={"higgs": FakeProvider(local=True, models=["tiny"], reply="pong")})
    url = await higgs_server(app)
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        async with client.messages.stream(model="tiny", max_tokens=5, messages=[
                {"role": "user", "content": "ping"}]) as stream:
            assert await stream.get_final_text() == "pong"


def test_higgs_thread_server_fixture_with_sync_sdk(higgs_thread_server):
    url = higgs_thread_server(providers={"higgs": FakeProvider(local=True, models=["tiny"], reply="sync")})
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == "sync"


def test_parse_sse_handles_events_comments_multiline_and_crlf():
    body = b": keep-alive\r\nevent: message_start\r\ndata: {\"a\": 1}\r\n\r\ndata: line1\ndata: line2\n\ndata: tail"
    assert parse_sse(body) == [SSEEvent("message_start", '{"a": 1}'), SSEEvent(None, "line1\nline2"),
                               SSEEvent(None, "tail")]


async def test_fake_provider_scripts_failures():
    from higgs.errors import ProviderError
    from higgs.testing.fake import provider_error

    err = provider_error(503)
    assert isinstance(err, ProviderError) and err.retryable and err.status == 503
    fake = FakeProvider(fail=err, fail_times=1)
    try:
        await fake.count_tokens(None, None)  # type: ignore[arg-type]
    except ProviderError:
        pass
    assert fake.fail_times == 0 and len(fake.calls) == 1


async def test_build_app_with_a_settings_object_adds_provider_sections():
    from higgs.config import HiggsSettings
    from higgs.testing import FixedRouter, router_plugin

    settings = HiggsSettings()
    up = FakeProvider(models=["m"], reply="remote")
    app = build_app(settings, providers={"up": up}, plugins=[router_plugin(FixedRouter(["up"]))])
    async with app_client(app) as client:
        resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": "x"}]})
        assert (await resp.json())["choices"][0]["message"]["content"] == "remote"
