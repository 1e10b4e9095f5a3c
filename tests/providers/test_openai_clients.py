"""OpenAI SDK clients through higgs to OpenAI-format upstreams (pass-through) and Anthropic ones (translation)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from higgs.remote.fake import Behaviour


def config(fake, **provider):
    return {"provider": {"up": {"url": fake.url + "/v1", "format": "openai", **provider}},
            "routes": [{"pattern": "^alias$", "provider": "up", "model": "gpt-real"}],
            "default": {"provider": "up"}}


async def test_passthrough_nonstream_is_byte_identical(fake, gateway):
    async with gateway(config(fake)) as url, aiohttp.ClientSession() as http:
        body = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "vendor_field": {"x": 1}}
        async with http.post(url + "/v1/chat/completions", json=body) as response:
            received = await response.read()
            assert response.headers["x-higgs-provider"] == "up"
            assert response.headers["x-higgs-route"] == "pattern:^alias$"
    assert received == fake.sent[-1]
    forwarded = fake.requests[-1].json()
    assert forwarded["model"] == "gpt-real" and forwarded["vendor_field"] == {"x": 1}


async def test_passthrough_stream_with_sdk_is_byte_identical(fake, gateway):
    async with gateway(config(fake)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="alias", messages=[{"role": "user", "content": "hi"}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == "Hello from the fake upstream!"
    assert fake.requests[-1].header("authorization") == "Bearer client-key"


async def test_passthrough_raw_stream_bytes_identical(fake, gateway):
    async with gateway(config(fake)) as url, aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(url + "/v1/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            received = await response.read()
    assert received == fake.sent[-1]


async def test_key_injection_and_gateway_key_not_forwarded(fake, gateway):
    cfg = config(fake, api_key="sk-upstream")
    cfg["server"] = {"api_key": "higgs-key"}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="higgs-key", max_retries=0)
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert fake.requests[-1].header("authorization") == "Bearer sk-upstream"

    cfg = config(fake)
    cfg["server"] = {"api_key": "higgs-key"}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="higgs-key", max_retries=0)
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert fake.requests[-1].header("authorization") is None


async def test_upstream_429_keeps_status_and_retry_after(fake, gateway):
    fake.script.append(Behaviour(status=429, headers={"retry-after": "30"}))
    async with gateway(config(fake, retry_max_wait=1)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["retry-after"] == "30"


async def test_upstream_retry_after_then_success(fake, gateway):
    fake.script.append(Behaviour(status=503, headers={"retry-after": "0"}))
    async with gateway(config(fake)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        answer = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello from the fake upstream!" and len(fake.requests) == 2


async def test_fallback_order_on_5xx_and_unreachable(fake, backup, gateway):
    cfg = {"provider": {"a": {"url": fake.url, "format": "openai"}, "b": {"url": "http://127.0.0.1:9", "format":
                        "openai"}, "c": {"url": backup.url, "format": "openai"}},
           "routes": [{"pattern": "gpt", "provider": "a", "fallback": ["b", "c"]}]}
    fake.script.append(Behaviour(status=500))
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "Hello from the backup!"
    assert raw.headers["x-higgs-provider"] == "c"
    assert len(fake.requests) == 1 and len(backup.requests) == 1


async def test_timeout_is_504_and_unreachable_is_502(fake, gateway):
    fake.script.append(Behaviour(delay=0.8))
    async with gateway(config(fake, timeout=0.3, max_retries=0)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 504
    cfg = {"provider": {"up": {"url": "http://127.0.0.1:9", "max_retries": 0}}, "default": {"provider": "up"}}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 502 and "could not be reached" in info.value.message


async def test_upstream_4xx_passes_through(fake, gateway):
    fake.script.append(Behaviour(status=400, body={"error": {"message": "bad thing", "type": "invalid_request_error",
                                                             "param": "messages", "code": None}}))
    async with gateway(config(fake)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "bad thing" in str(info.value)


async def test_mid_stream_death_raises_in_the_sdk(fake, gateway):
    fake.script.append(Behaviour(die_after=3))
    async with gateway(config(fake)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        stream = await client.chat.completions.create(model="gpt-4o", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.APIError):
            async with asyncio.timeout(10):
                async for _ in stream:
                    pass


async def test_client_disconnect_cancels_upstream(fake, gateway):
    fake.script.append(Behaviour(chunk_delay=0.05, text=" ".join(["w"] * 80)))
    async with gateway(config(fake)) as url:
        async with aiohttp.ClientSession() as http:
            body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(url + "/v1/chat/completions", json=body) as response:
                await response.content.readline()
        for _ in range(60):
            if fake.aborted:
                break
            await asyncio.sleep(0.05)
    assert fake.aborted == 1 and fake.events_sent < 80


async def test_models_lists_provider_models(fake, gateway):
    async with gateway(config(fake)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        ids = [m.id async for m in client.models.list()]
    assert "gpt-fake" in ids


async def test_openai_client_to_anthropic_upstream_translates(fake, gateway):
    cfg = {"provider": {"claude": {"url": fake.url, "format": "anthropic", "default_max_tokens": 777}},
           "routes": [{"pattern": "claude", "provider": "claude"}]}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
        answer = await client.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Hello from the fake upstream!"
        sent = fake.requests[-1]
        assert sent.path == "/v1/messages" and sent.json()["max_tokens"] == 777
        assert sent.header("x-api-key") == "client-key" and sent.header("anthropic-version") == "2023-06-01"
        assert sent.header("authorization") is None
        stream = await client.chat.completions.create(model="claude-x", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello from the fake upstream!"


async def test_anthropic_529_maps_to_503_for_openai_clients(fake, gateway):
    fake.script.append(Behaviour(status=529))
    cfg = {"provider": {"claude": {"url": fake.url, "format": "anthropic", "max_retries": 0}},
           "default": {"provider": "claude"}}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    assert json.loads(info.value.response.text)["error"]["message"]


async def test_models_lists_route_aliases(fake, gateway):
    cfg = {**config(fake, models=["gpt-real"]), "routes": [
        {"pattern": "^alias$", "provider": "up", "model": "gpt-real"},
        {"pattern": "gpt-.*", "provider": "up"}]}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        models = {m.id: m.owned_by async for m in client.models.list()}
    assert models == {"gpt-real": "up", "alias": "up"}
