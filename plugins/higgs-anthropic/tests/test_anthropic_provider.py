"""AnthropicProvider against a fake Anthropic upstream on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from higgs_anthropic import ANTHROPIC_VERSION, AnthropicProvider, higgs_providers

from higgs.config import HiggsSettings, ProviderSettings
from higgs.errors import ProviderError
from higgs.formats.anthropic import AnthropicFormat
from higgs.formats.openai import OpenAIFormat
from higgs.interfaces import CallContext, ProviderContext, RawRequest, RouteDecision
from higgs.messages import ChatRequest, Message, StreamFinish, TextBlock, accumulate
from higgs.remote.fake import Behaviour, FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def provider(fake) -> AsyncIterator[AnthropicProvider]:
    made = make(fake.url + "/", default_max_tokens=321)
    yield made
    await made.close()


def make(url: str, **options) -> AnthropicProvider:
    ctx = ProviderContext(settings=HiggsSettings(), architectures={},
                          formats={"openai": OpenAIFormat(), "anthropic": AnthropicFormat()})
    return AnthropicProvider(ProviderSettings(name="claude", url=url, **options), ctx)


def call(client_format: str = "openai", headers: dict[str, str] | None = None,
         providers: tuple[str, ...] = ("claude",)) -> CallContext:
    return CallContext(request_id="r", client_format=client_format, headers=headers or {},
                       route=RouteDecision(providers, "claude-opus-4-6", "pattern:opus", "pattern"))


def request(**fields) -> ChatRequest:
    return ChatRequest(model="opus", messages=[Message(role="user", content=[TextBlock(text="hi")])], **fields)


async def test_translation_adds_version_default_max_tokens_and_x_api_key(fake, provider):
    answer = await provider.chat(request(), call(headers={"authorization": "Bearer sk-ant-client"}))
    assert answer.content[0].text == "Hello from the fake upstream!"
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.json()["model"] == "claude-opus-4-6" and sent.json()["max_tokens"] == 321
    assert sent.header("x-api-key") == "sk-ant-client" and sent.header("authorization") is None
    assert sent.header("anthropic-version") == ANTHROPIC_VERSION


async def test_explicit_max_tokens_is_kept_and_streams_translate(fake, provider):
    events = [e async for e in provider.chat_stream(request(max_tokens=9), call())]
    assert isinstance(events[-1], StreamFinish) and accumulate(events).content[0].text.startswith("Hello")
    assert fake.requests[-1].json()["max_tokens"] == 9 and fake.requests[-1].json()["stream"] is True


async def test_passthrough_keeps_the_clients_version_and_beta_headers(fake, provider):
    body = json.dumps({"model": "claude-opus-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    raw = RawRequest("POST", "/v1/messages", "", [("content-type", "application/json"),
                                                  ("anthropic-version", "2099-01-01"),
                                                  ("anthropic-beta", "tools-2024"), ("x-api-key", "sk-ant-c")],
                     body.encode())
    response = await provider.passthrough(raw, call("anthropic"))
    assert b"".join([c async for c in response.body]) == fake.sent[-1]
    sent = fake.requests[-1]
    assert sent.header("anthropic-version") == "2099-01-01" and sent.header("anthropic-beta") == "tools-2024"
    assert sent.header("x-api-key") == "sk-ant-c"


async def test_overloaded_529_is_503_for_openai_clients_and_retryable(fake):
    provider = make(fake.url, max_retries=0)
    try:
        fake.script.append(Behaviour(status=529))
        with pytest.raises(ProviderError) as info:
            await provider.chat(request(), call("openai"))
        assert info.value.status == 503 and info.value.retryable and info.value.info.kind == "overloaded"
        fake.script.append(Behaviour(status=529))
        with pytest.raises(ProviderError) as info:
            await provider.chat(request(), call("anthropic"))
        assert info.value.status == 529
    finally:
        await provider.close()


async def test_list_models_sends_key_and_version(fake):
    provider = make(fake.url, api_key="sk-ant-conf")
    try:
        assert "claude-fake" in [m.id for m in await provider.list_models()]
        sent = fake.requests[-1]
        assert sent.header("x-api-key") == "sk-ant-conf" and sent.header("anthropic-version") == ANTHROPIC_VERSION
    finally:
        await provider.close()


async def test_count_tokens_upstream_and_stub(fake, provider):
    assert await provider.count_tokens(request(), call()) == 42
    assert fake.requests[-1].path == "/v1/messages/count_tokens"
    stub = make(fake.url, stub_count_tokens=True)
    assert 0 < await stub.count_tokens(request(), call()) < 20
    await stub.close()


def test_registration():
    (spec,) = higgs_providers()
    assert spec.name == "anthropic" and spec.formats == ("anthropic",)
    assert make("https://api.anthropic.com").upstream_format == "anthropic"
