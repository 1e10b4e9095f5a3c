"""Anthropic SDK clients through higgs to Anthropic-format upstreams (pass-through) and OpenAI ones (translation)."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import pytest

from higgs.remote.fake import Behaviour

MESSAGES = [{"role": "user", "content": "hi"}]


def config(fake, fmt="anthropic", **provider):
    return {"provider": {"up": {"url": fake.url, "format": fmt, **provider}},
            "routes": [{"pattern": "opus", "provider": "up", "model": "claude-opus-4-6"}],
            "default": {"provider": "up"}}


async def test_passthrough_nonstream_and_stream_are_byte_identical(fake, gateway):
    async with gateway(config(fake)) as url, aiohttp.ClientSession() as http:
        headers = {"x-api-key": "client-key", "anthropic-version": "2023-06-01"}
        body = {"model": "opus", "max_tokens": 50, "messages": MESSAGES, "metadata": {"user_id": "u1"}}
        async with http.post(url + "/v1/messages", json=body, headers=headers) as response:
            assert response.headers["x-higgs-route"] == "pattern:opus"
            assert await response.read() == fake.sent[-1]
        assert fake.requests[-1].json() == {**body, "model": "claude-opus-4-6"}
        async with http.post(url + "/v1/messages", json={**body, "stream": True}, headers=headers) as response:
            assert await response.read() == fake.sent[-1]
    assert fake.sent[-1].endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')


async def test_bearer_token_reaches_anthropic_as_x_api_key(fake, gateway):
    async with gateway(config(fake)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, auth_token="sk-ant-client", max_retries=0)
        answer = await client.messages.create(model="claude-sonnet", max_tokens=20, messages=MESSAGES)
    assert answer.content[0].text == "Hello from the fake upstream!"
    sent = fake.requests[-1]
    assert sent.header("x-api-key") == "sk-ant-client" and sent.header("authorization") is None
    assert sent.header("anthropic-version") == client.default_headers["anthropic-version"]  # the client's own


async def test_configured_key_and_strip_auth(fake, gateway):
    async with gateway(config(fake, api_key="sk-ant-configured")) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="client", max_retries=0)
        await client.messages.create(model="m", max_tokens=20, messages=MESSAGES)
    assert fake.requests[-1].header("x-api-key") == "sk-ant-configured"
    async with gateway(config(fake, strip_auth=True)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="client", max_retries=0)
        await client.messages.create(model="m", max_tokens=20, messages=MESSAGES)
    assert fake.requests[-1].header("x-api-key") is None


async def test_anthropic_client_to_openai_upstream_translates(fake, gateway):
    async with gateway(config(fake, "openai")) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="client-key", max_retries=0)
        answer = await client.messages.create(model="opus", max_tokens=20, messages=MESSAGES, system="be brief")
        assert answer.content[0].text == "Hello from the fake upstream!" and answer.stop_reason == "end_turn"
        sent = fake.requests[-1]
        assert sent.path == "/v1/chat/completions" and sent.json()["model"] == "claude-opus-4-6"
        assert sent.header("authorization") == "Bearer client-key" and sent.header("x-api-key") is None
        async with client.messages.stream(model="opus", max_tokens=20, messages=MESSAGES) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert text == "Hello from the fake upstream!" and final.usage.output_tokens == 5


async def test_count_tokens_passthrough_and_stub(fake, gateway):
    async with gateway(config(fake)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        assert (await client.messages.count_tokens(model="m", messages=MESSAGES)).input_tokens == 42
    async with gateway(config(fake, stub_count_tokens=True)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        count = (await client.messages.count_tokens(model="m", messages=MESSAGES)).input_tokens
        assert count != 42 and 0 < count < 20
    async with gateway(config(fake, "openai", stub_count_tokens=True)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        long = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 20}]
        count = (await client.messages.count_tokens(model="m", messages=long)).input_tokens
        assert 180 <= count <= 260  # 200 real tokens by cl100k
    assert not any(r.path.endswith("count_tokens") for r in fake.requests[1:])


async def test_count_tokens_without_stub_on_openai_upstream_is_a_clear_error(fake, gateway):
    async with gateway(config(fake, "openai")) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.count_tokens(model="m", messages=MESSAGES)
    assert "stub_count_tokens" in info.value.message


async def test_openai_429_reaches_anthropic_client_as_rate_limit_with_retry_after(fake, gateway):
    fake.script.append(Behaviour(status=429, headers={"retry-after": "42"}))
    async with gateway(config(fake, "openai", retry_max_wait=1)) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(model="m", max_tokens=20, messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "42"
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "rate_limit_error"


async def test_mid_stream_death_ends_with_an_error_event(fake, gateway):
    for fmt in ("anthropic", "openai"):  # pass-through, then translation
        fake.script.append(Behaviour(die_after=4))
        async with gateway(config(fake, fmt)) as url:
            client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
            with pytest.raises(anthropic.APIError):
                async with asyncio.timeout(10):
                    async with client.messages.stream(model="m", max_tokens=20, messages=MESSAGES) as stream:
                        async for _ in stream:
                            pass


async def test_fallback_from_anthropic_to_openai_upstream_on_overload(fake, backup, gateway):
    cfg = {"provider": {"claude": {"url": fake.url, "format": "anthropic"},
                        "gpt": {"url": backup.url, "format": "openai"}},
           "routes": [{"pattern": ".", "provider": "claude", "fallback": ["gpt"]}]}
    fake.script.append(Behaviour(status=529))
    async with gateway(cfg) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        raw = await client.messages.with_raw_response.create(model="claude-x", max_tokens=20, messages=MESSAGES)
    assert raw.headers["x-higgs-provider"] == "gpt" and (await raw.parse()).content[0].text == "Hello from the backup!"


async def test_unknown_model_with_local_only_default_is_404_naming_the_model(fake, gateway):
    cfg = {"provider": {"up": {"url": fake.url, "format": "anthropic"}},
           "routes": [{"pattern": "^fast$", "provider": "up", "model": "claude-haiku"}]}
    async with gateway(cfg) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.NotFoundError) as info:
            await client.messages.create(model="nope-model", max_tokens=20, messages=MESSAGES)
    assert "nope-model" in info.value.message and "fast" in info.value.message


async def test_a_higgs_instance_is_itself_a_provider(fake, gateway):
    """Fleet: gateway A speaks Anthropic to gateway B, which speaks OpenAI to the upstream."""
    inner = {"server": {"api_key": "fleet-key"}, "provider": {"up": {"url": fake.url, "format": "openai"}},
             "default": {"provider": "up"}}
    async with gateway(inner) as b_url:
        outer = {"provider": {"mac2": {"url": b_url, "format": "anthropic", "api_key": "fleet-key"}},
                 "routes": [{"pattern": "^team-", "provider": "mac2", "model": "gpt-on-mac2"}]}
        async with gateway(outer) as a_url:
            client = anthropic.AsyncAnthropic(base_url=a_url, api_key="unused", max_retries=0)
            async with client.messages.stream(model="team-model", max_tokens=20, messages=MESSAGES) as stream:
                text = "".join([t async for t in stream.text_stream])
    assert text == "Hello from the fake upstream!"
    assert fake.requests[-1].json()["model"] == "gpt-on-mac2"
    assert fake.requests[-1].header("authorization") is None  # B's own key is never forwarded further
