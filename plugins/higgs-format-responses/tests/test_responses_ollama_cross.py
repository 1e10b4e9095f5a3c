"""Responses <-> Ollama native, both directions, through the canonical model (needs higgs-format-ollama)."""

from __future__ import annotations

import json

import pytest

higgs_format_ollama = pytest.importorskip("higgs_format_ollama")
ollama = pytest.importorskip("ollama")

import higgs_format_responses  # noqa: E402
import openai  # noqa: E402

from higgs.hookspecs import hookimpl  # noqa: E402
from higgs.remote import RemoteProvider  # noqa: E402
from higgs.specs import ProviderSpec  # noqa: E402
from higgs.testing import build_app, serve_app  # noqa: E402


class RemotePlugin:
    @hookimpl
    def higgs_providers(self) -> list[ProviderSpec]:
        return [ProviderSpec(name="remote", factory=RemoteProvider, formats=("responses", "ollama"))]


PLUGINS = [("responses-format", higgs_format_responses), ("ollama-format", higgs_format_ollama),
           ("test-remote", RemotePlugin())]


async def test_responses_client_to_ollama_upstream(remote_config, upstream):
    app = build_app(remote_config(upstream, "ollama"), plugins=PLUGINS)
    async with serve_app(app) as url:
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        full = await api.responses.create(model="llama3.2", input="hi", instructions="sys", max_output_tokens=9)
        stream = await api.responses.create(model="llama3.2", input="hi", stream=True)
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        upstream.call_tool = True
        upstream.arguments = {"q": "x"}
        tools = [{"type": "namespace", "name": "kb", "tools": [{"type": "function", "name": "search",
                                                                 "parameters": {"type": "object"}}]}]
        called = await api.responses.create(model="llama3.2", input="find", tools=tools, stream=True)
        done = [e async for e in called if e.type == "response.output_item.done"]
    assert full.output_text == text == "Hi from upstream"
    first = upstream.bodies[0]
    assert upstream.paths[0] == "/api/chat" and first["stream"] is False and first["options"] == {"num_predict": 9}
    assert first["messages"][0] == {"role": "system", "content": "sys"}
    assert upstream.bodies[-1]["tools"][0]["function"]["name"] == "kb__search"
    item = done[-1].item
    assert item.type == "function_call" and item.name == "search" and item.namespace == "kb"
    assert json.loads(item.arguments) == {"q": "x"}


async def test_ollama_client_to_responses_upstream(remote_config, upstream):
    app = build_app(remote_config(upstream, "responses"), plugins=PLUGINS)
    async with serve_app(app) as url:
        client = ollama.AsyncClient(host=url)
        full = await client.chat(model="gpt-up", messages=[{"role": "user", "content": "hi"}], stream=False)
        parts = [p async for p in await client.chat(model="gpt-up", stream=True,
                                                    messages=[{"role": "user", "content": "hi"}])]
        generated = await client.generate(model="gpt-up", prompt="hi", system="sys")
    assert full.message.content == "".join(p.message.content for p in parts) == generated.response
    assert generated.response == "Hi from upstream"
    assert upstream.paths[-1] == "/v1/responses" and upstream.bodies[-1]["instructions"] == "sys"
