"""Failure paths across formats: upstream error events mid-stream, garbage bodies, translated disconnects."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import anthropic
import openai
import pytest

from higgs.remote.fake import Behaviour

MESSAGES = [{"role": "user", "content": "hi"}]


def config(fake, fmt, **provider):
    return {"provider": {"up": {"url": fake.url, "format": fmt, "max_retries": 0, **provider}},
            "default": {"provider": "up"}}


async def test_anthropic_overload_event_mid_stream_reaches_openai_client_as_error(fake, gateway):
    fake.script.append(Behaviour(error_after=4))
    async with gateway(config(fake, "anthropic")) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        stream = await client.chat.completions.create(model="claude-x", stream=True, messages=MESSAGES)
        received = []
        with pytest.raises(openai.APIError) as info:
            async with asyncio.timeout(10):
                async for chunk in stream:
                    received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received).startswith("Hello") and "Overloaded" in str(info.value)


async def test_openai_error_chunk_mid_stream_reaches_anthropic_client_as_error_event(fake, gateway):
    fake.script.append(Behaviour(error_after=3))
    async with gateway(config(fake, "openai")) as url, aiohttp.ClientSession() as http:
        body = {"model": "gpt-x", "max_tokens": 20, "stream": True, "messages": MESSAGES}
        async with http.post(url + "/v1/messages", json=body) as response:
            assert response.status == 200
            text = (await response.read()).decode()
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[0].startswith("event: message_start")
    assert events[-1].startswith("event: error")
    assert json.loads(events[-1].split("data: ", 1)[1])["error"]["message"] == "fake mid-stream failure"


async def test_garbage_upstream_body_is_a_502_in_the_clients_format(fake, gateway):
    fake.script.append(Behaviour(raw=b"<html>bad gateway page</html>"))
    async with gateway(config(fake, "openai")) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(model="gpt-x", max_tokens=20, messages=MESSAGES)
    assert info.value.status_code == 502 and info.value.body["type"] == "error"


async def test_translated_stream_client_disconnect_cancels_upstream(fake, gateway):
    fake.script.append(Behaviour(chunk_delay=0.05, text=" ".join(["w"] * 80)))
    async with gateway(config(fake, "openai")) as url:
        async with aiohttp.ClientSession() as http:
            body = {"model": "gpt-x", "max_tokens": 20, "stream": True, "messages": MESSAGES}
            async with http.post(url + "/v1/messages", json=body) as response:
                await response.content.readline()
        for _ in range(60):
            if fake.aborted:
                break
            await asyncio.sleep(0.05)
    assert fake.aborted == 1 and fake.events_sent < 80


async def test_ollama_through_the_gateway(fake, gateway):
    cfg = {"provider": {"ollama": {"url": fake.url}}, "default": {"provider": "ollama"}}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
        ids = [m.id async for m in client.models.list()]
        answer = await client.chat.completions.create(model="llama3.2", messages=MESSAGES)
        anth = anthropic.AsyncAnthropic(base_url=url, api_key="client-key", max_retries=0)
        message = await anth.messages.create(model="llama3.2", max_tokens=10, messages=MESSAGES)
    assert "gpt-fake" in ids and any(r.path == "/api/tags" for r in fake.requests)
    assert answer.choices[0].message.content == message.content[0].text == "Hello from the fake upstream!"
    chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 2 and all(r.header("authorization") is None for r in chats)


async def test_keys_never_reach_logs_or_error_bodies(fake, gateway, caplog):
    caplog.set_level("DEBUG")
    fake.script.append(Behaviour(status=401, body={"error": {"message": "Incorrect API key provided: sk-client-123",
                                                             "type": "invalid_request_error"}}))
    fake.script.append(Behaviour(status=500, body={"error": {"message": "upstream saw sk-conf-456"}}))
    cfg = {"server": {"api_key": "higgs-gw-789"},
           "provider": {"a": {"url": fake.url, "format": "openai"},
                        "b": {"url": fake.url, "format": "openai", "api_key": "sk-conf-456", "max_retries": 0}},
           "routes": [{"pattern": "^a$", "provider": "a"}, {"pattern": "^b$", "provider": "b"}]}
    async with gateway(cfg) as url, aiohttp.ClientSession() as http:
        for model, key in (("a", "sk-client-123"), ("b", "higgs-gw-789")):
            headers = {"authorization": "Bearer higgs-gw-789", "x-api-key": key}
            async with http.post(url + "/v1/messages", json={"model": model, "max_tokens": 5, "messages": MESSAGES},
                                 headers=headers) as response:
                body = await response.text()
                assert response.status in (401, 500) and "***" in body
                assert "sk-client-123" not in body and "sk-conf-456" not in body and "higgs-gw-789" not in body
    for secret in ("sk-client-123", "sk-conf-456", "higgs-gw-789"):
        assert secret not in caplog.text
    # Bearer authenticated to higgs; the x-api-key was the client's upstream key and went upstream.
    assert fake.requests[0].header("authorization") == "Bearer sk-client-123"
    assert fake.requests[1].header("authorization") == "Bearer sk-conf-456"


async def test_round_robin_spreads_requests_and_names_the_provider(fake, backup, gateway):
    cfg = {"provider": {"a": {"url": fake.url}, "b": {"url": backup.url}},
           "routes": [{"pattern": ".", "providers": ["a", "b"], "strategy": "round_robin"}]}
    async with gateway(cfg) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        served = []
        for _ in range(4):
            raw = await client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
            served.append(raw.headers["x-higgs-provider"])
    assert served == ["a", "b", "a", "b"] and len(fake.requests) == len(backup.requests) == 2


async def test_pass_through_error_bodies_never_echo_keys(fake, gateway):
    fake.script.append(Behaviour(status=401, body={"error": {"message": "Incorrect API key provided: sk-conf-456",
                                                             "type": "invalid_request_error"}}))
    fake.script.append(Behaviour(status=401, body={"error": {"message": "Incorrect API key provided: sk-client-123",
                                                             "type": "invalid_request_error"}}))
    cfg = {"provider": {"b": {"url": fake.url, "format": "openai", "api_key": "sk-conf-456", "max_retries": 0},
                        "a": {"url": fake.url, "format": "openai", "max_retries": 0}},
           "routes": [{"pattern": "^b$", "provider": "b"}, {"pattern": "^a$", "provider": "a"}]}
    async with gateway(cfg) as url:
        for model, key in (("b", "unused"), ("a", "sk-client-123")):
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as err:
                await client.chat.completions.create(model=model, messages=MESSAGES)
            text = err.value.response.text
            assert "***" in text and "sk-conf-456" not in text and "sk-client-123" not in text
            assert err.value.body["message"] == "Incorrect API key provided: ***"  # still the upstream's JSON


async def test_masked_key_echoes_are_redacted_in_both_paths(fake, gateway):
    """OpenAI's 401 echoes a masked key (``sk-abc12***...wxyz``): no prefix of any known secret gets out."""
    conf, client_key, gw = "sk-conf-4567890abcdwxyz", "sk-client-1234567efgh", "higgs-gw-7890123"
    masked = {conf: "sk-conf-4***...wxyz", client_key: "sk-clie**********efgh", gw: "higgs-gw-78**..."}
    for key in (conf, client_key, gw, conf, client_key, gw):
        fake.script.append(Behaviour(status=401, body={"error": {
            "message": f"Incorrect API key provided: {masked[key]}. You can find your API key elsewhere.",
            "type": "invalid_request_error"}}))
    cfg = {"server": {"api_key": gw},
           "provider": {"b": {"url": fake.url, "format": "openai", "api_key": conf, "max_retries": 0},
                        "a": {"url": fake.url, "format": "openai", "max_retries": 0}},
           "routes": [{"pattern": "^b$", "provider": "b"}, {"pattern": "^a$", "provider": "a"}]}
    headers = {"authorization": f"Bearer {gw}", "x-api-key": client_key}
    async with gateway(cfg) as url, aiohttp.ClientSession() as http:
        for path, body in (("/v1/messages", {"max_tokens": 5}), ("/v1/chat/completions", {})):  # translated; relayed
            for model in ("b", "a", "a"):
                async with http.post(url + path, json={"model": model, "messages": MESSAGES, **body},
                                     headers=headers) as response:
                    text = await response.text()
                assert response.status == 401
                assert "Incorrect API key provided: ***. You can find" in text
                assert all(value[:6] not in text for value in masked.values()), text
