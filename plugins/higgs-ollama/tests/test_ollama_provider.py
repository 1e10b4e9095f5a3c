"""OllamaProvider against a fake Ollama (OpenAI-compatible /v1 plus /api/tags) on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from higgs_ollama import OllamaProvider, higgs_providers

from higgs.config import HiggsSettings, ProviderSettings
from higgs.formats.openai import OpenAIFormat
from higgs.interfaces import CallContext, ProviderContext, RawRequest, RouteDecision
from higgs.messages import ChatRequest, Message, TextBlock
from higgs.remote.fake import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(models=("llama3.2:latest", "qwen3:8b")) as upstream:
        yield upstream


def make(url: str, **options) -> OllamaProvider:
    ctx = ProviderContext(settings=HiggsSettings(), formats={"openai": OpenAIFormat()}, architectures={})
    return OllamaProvider(ProviderSettings(name="ollama", url=url, **options), ctx)


def call(client_format: str = "openai") -> CallContext:
    return CallContext(request_id="r", client_format=client_format,
                       headers={"authorization": "Bearer client-key"},
                       route=RouteDecision(("ollama",), "llama3.2:latest", "default", "default"))


async def test_models_come_from_api_tags(fake):
    provider = make(fake.url + "/v1")  # a configured /v1 base still finds /api/tags at the root
    try:
        assert [m.id for m in await provider.list_models()] == ["llama3.2:latest", "qwen3:8b"]
        assert fake.requests[-1].path == "/api/tags"
    finally:
        await provider.close()


async def test_chat_goes_to_v1_and_strips_auth_by_default(fake):
    provider = make(fake.url)
    try:
        request = ChatRequest(model="x", messages=[Message(role="user", content=[TextBlock(text="hi")])])
        answer = await provider.chat(request, call("anthropic"))
        assert answer.content[0].text == "Hello from the fake upstream!"
        sent = fake.requests[-1]
        assert sent.path == "/v1/chat/completions" and sent.json()["model"] == "llama3.2:latest"
        assert sent.header("authorization") is None
    finally:
        await provider.close()


async def test_strip_auth_false_forwards_the_client_key(fake):
    provider = make(fake.url, strip_auth=False)
    try:
        raw = RawRequest("POST", "/v1/chat/completions", "", [("content-type", "application/json")],
                         json.dumps({"model": "llama3.2:latest", "messages": []}).encode())
        response = await provider.passthrough(raw, call())
        assert b"".join([c async for c in response.body]) == fake.sent[-1]
        assert fake.requests[-1].header("authorization") == "Bearer client-key"
    finally:
        await provider.close()


def test_registered_kind_is_chosen_by_name_or_kind_only():
    (spec,) = higgs_providers()
    assert spec.name == "ollama" and spec.formats == () and not spec.local
    assert make("http://localhost:11434").upstream_format == "openai"
