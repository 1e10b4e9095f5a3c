"""The official ``ollama`` Python client against higgs: local model, translated upstreams, native upstream."""

from __future__ import annotations

import base64
import json

import aiohttp
import higgs_format_ollama
import ollama
import pytest

from higgs.messages import ImageBlock, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock
from higgs.remote.fake import FakeUpstream

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


async def test_chat_non_stream_with_options(gateway, local):
    async with gateway() as url:
        client = ollama.AsyncClient(host=url)
        response = await client.chat(model="local-model:latest", stream=False, format="json", think=True,
                                     options={"temperature": 0.1, "top_p": 0.8, "top_k": 20, "num_predict": 64,
                                              "stop": ["\n\n"], "seed": 7},
                                     messages=[{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Hi", "images": [PNG]}])
    assert response.message.role == "assistant" and response.message.content == "Hello from the local model."
    assert response.done and response.done_reason == "stop"
    assert response.prompt_eval_count == 11 and response.eval_count == 7
    seen = local.requests[-1]
    assert seen.model == "local-model" and seen.system_text() == "Be brief."
    image, text = seen.messages[0].content
    assert isinstance(image, ImageBlock) and image.media_type == "image/png" and image.data == PNG
    assert text == TextBlock(text="Hi")
    s = seen.sampling
    assert (s.temperature, s.top_p, s.top_k, s.seed) == (0.1, 0.8, 20, 7)
    assert seen.max_tokens == 64 and seen.stop == ["\n\n"]
    assert seen.response_format.type == "json_object" and seen.reasoning.enabled is True


async def test_chat_stream_is_ndjson(gateway, local):
    local.blocks = [ThinkingBlock(thinking="pondering"), TextBlock(text="one two three")]
    async with gateway() as url:
        client = ollama.AsyncClient(host=url)
        parts = [p async for p in await client.chat(model="local-model", messages=[{"role": "user", "content": "x"}],
                                                    stream=True)]
        async with aiohttp.ClientSession() as http, http.post(url + "/api/chat", json={
                "model": "local-model", "messages": [{"role": "user", "content": "x"}]}) as raw:
            assert raw.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in (await raw.read()).splitlines()]
    assert "".join(p.message.thinking or "" for p in parts) == "pondering"
    assert "".join(p.message.content for p in parts) == "one two three"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == 7 and parts[-1].total_duration > 0
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


async def test_tools_and_tool_results(gateway, local):
    local.blocks = [ToolUseBlock(id="call_a", name="get_weather", input={"city": "Oslo"})]
    local.stop_reason = "tool_use"
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    async with gateway() as url:
        client = ollama.AsyncClient(host=url)
        first = await client.chat(model="local-model", tools=tools, messages=[{"role": "user", "content": "Oslo?"}])
        streamed = [p async for p in await client.chat(model="local-model", tools=tools, stream=True,
                                                       messages=[{"role": "user", "content": "Oslo?"}])]
        call = first.message.tool_calls[0]
        local.blocks, local.stop_reason = [TextBlock(text="Cold.")], "end_turn"
        second = await client.chat(model="local-model", tools=tools, messages=[
            {"role": "user", "content": "Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": call.function.name,
                                                                             "arguments": call.function.arguments}}]},
            {"role": "tool", "content": "-3C", "tool_name": "get_weather"}])
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Oslo"}
    streamed_calls = [c for p in streamed for c in p.message.tool_calls or []]
    assert len(streamed_calls) == 1 and streamed_calls[0].function.arguments == {"city": "Oslo"}
    assert second.message.content == "Cold."
    seen = local.requests[-1]
    assert seen.tools[0].name == "get_weather"
    use = seen.messages[1].content[0]
    result = seen.messages[2].content[0]
    assert isinstance(use, ToolUseBlock) and isinstance(result, ToolResultBlock)
    assert result.tool_use_id == use.id and result.content[0].text == "-3C"


async def test_generate_templated_raw_and_stream(gateway, local):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    async with gateway() as url:
        client = ollama.AsyncClient(host=url)
        full = await client.generate(model="local-model", prompt="Why?", system="Sys", format=schema)
        parts = [p async for p in await client.generate(model="local-model", prompt="Why?", stream=True)]
        raw = await client.generate(model="local-model", prompt="Once upon", raw=True)
        raw_parts = [p async for p in await client.generate(model="local-model", prompt="Once", raw=True,
                                                            stream=True)]
        loaded = await client.generate(model="local-model")
    assert full.response == "Hello from the local model." and full.done
    chat_request = local.requests[0]
    assert chat_request.system_text() == "Sys" and chat_request.messages[0].text() == "Why?"
    assert chat_request.response_format.json_schema == schema
    assert "".join(p.response for p in parts) == "Hello from the local model." and parts[-1].done
    assert raw.response == " raw continuation"
    assert local.requests[2].prompt == ["Once upon"]
    assert "".join(p.response for p in raw_parts) == " raw continuation"
    assert loaded.done and loaded.done_reason == "load"


async def test_embed_tags_show_ps_version(gateway, local):
    async with gateway() as url:
        client = ollama.AsyncClient(host=url)
        embedded = await client.embed(model="local-model", input=["ab", "abcd"])
        single = await client.embed(model="local-model", input="abc")
        tags = await client.list()
        shown = await client.show("local-model")
        running = await client.ps()
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/version") as response:
                version = (await response.json())["version"]
            async with http.post(url + "/api/embeddings", json={"model": "local-model", "prompt": "xyz"}) as response:
                legacy = await response.json()
            async with http.get(url + "/") as response:
                root = await response.text()
            async with http.head(url + "/") as response:
                assert response.status == 200
            async with http.post(url + "/api/pull", json={"model": "llama3.2"}) as response:
                assert response.status == 404 and "error" in await response.json()
    assert embedded.embeddings == [[2.0, 0.5], [4.0, 0.5]] and single.embeddings == [[3.0, 0.5]]
    assert [m.model for m in tags.models] == ["local-model"]
    assert shown.modelinfo["higgs.context_length"] == 4096 and "tools" in shown.capabilities
    assert [m.model for m in running.models] == ["local-model"]
    assert version.count(".") == 2
    assert legacy == {"embedding": [3.0, 0.5]}
    assert root == "Ollama is running"


@pytest.mark.parametrize(("method", "path", "body", "status", "needle"), [
    ("POST", "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "nope"),
    ("POST", "/api/chat", {"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ("POST", "/api/chat", {"model": "local-model", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("POST", "/api/chat", {"model": "local-model", "messages": [{"role": "user", "content": "x"}],
                           "options": {"temperature": "hot"}}, 400, "temperature"),
    ("POST", "/api/chat", {"model": "local-model", "messages": [{"role": "user", "content": "x"}],
                           "format": "yaml"}, 400, "format"),
    ("POST", "/api/show", {"model": "nope"}, 404, "nope"),
    ("POST", "/api/embed", {"model": "local-model", "input": []}, 400, "input"),
])
async def test_errors_are_ollama_shaped(gateway, method, path, body, status, needle):
    async with gateway() as url, aiohttp.ClientSession() as http:
        async with http.request(method, url + path, json=body) as response:
            assert response.status == status
            payload = await response.json()
    assert set(payload) == {"error"} and needle in payload["error"]


async def test_client_raises_response_error(gateway):
    async with gateway() as url:
        client = ollama.AsyncClient(host=url)
        with pytest.raises(ollama.ResponseError) as caught:
            await client.chat(model="unknown-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404 and "unknown-model" in caught.value.error


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
async def test_translated_upstreams(remote_config, gateway, fmt):
    async with FakeUpstream() as fake, gateway(remote_config(fake.url, fmt)) as url:
        client = ollama.AsyncClient(host=url)
        full = await client.chat(model="gpt-fake", messages=[{"role": "user", "content": "hi"}],
                                 options={"num_predict": 30})
        parts = [p async for p in await client.chat(model="gpt-fake", stream=True,
                                                    messages=[{"role": "user", "content": "hi"}])]
        generated = await client.generate(model="gpt-fake", prompt="hi")
    assert full.message.content == "Hello from the fake upstream!"
    assert "".join(p.message.content for p in parts) == "Hello from the fake upstream!" and parts[-1].done
    assert generated.response == "Hello from the fake upstream!"
    sent = fake.requests[0].json()
    assert sent["model"] == "gpt-fake" and sent["max_tokens"] == 30


async def test_native_upstream_passthrough_and_translation(remote_config, gateway, ollama_upstream):
    async with gateway(remote_config(ollama_upstream.url, "ollama")) as url:
        client = ollama.AsyncClient(host=url)
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                "keep_alive": "5m"}
        async with aiohttp.ClientSession() as http, http.post(url + "/api/chat", json=body) as response:
            answer = await response.json()
        streamed = [p async for p in await client.chat(model="llama3.2", stream=True,
                                                       messages=[{"role": "user", "content": "hi"}])]
        embedded = await client.embed(model="nomic", input=["a", "b"])
        with pytest.raises(ollama.ResponseError) as caught:
            await client.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    # Same format in and out: the body reaches the upstream untouched.
    assert ollama_upstream.bodies[0] == body
    assert answer["message"]["content"] == "Hi from Ollama upstream"
    assert "".join(p.message.content for p in streamed) == "Hi from Ollama upstream"
    assert embedded.embeddings == [[0.1, 0.2, 0.3]] * 2
    assert caught.value.status_code == 404 and "missing" in caught.value.error


async def test_ollama_provider_plugin_with_native_format(ollama_upstream):
    """The real ``ollama`` provider kind, configured with ``format = "ollama"``, reached from an OpenAI client."""
    higgs_ollama = pytest.importorskip("higgs_ollama")
    import openai

    from higgs.testing import build_app, serve_app

    config = {"provider": {"ollama": {"kind": "ollama", "url": ollama_upstream.url, "format": "ollama"}},
              "default": {"provider": "ollama"}}
    app = build_app(config, plugins=[("ollama", higgs_ollama), ("ollama-format", higgs_format_ollama)])
    async with serve_app(app) as url:
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        reply = await api.chat.completions.create(model="llama3.2", max_tokens=5,
                                                  messages=[{"role": "user", "content": "hi"}])
        stream = await api.chat.completions.create(model="llama3.2", stream=True,
                                                   messages=[{"role": "user", "content": "hi"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert reply.choices[0].message.content == "Hi from Ollama upstream" == text
    sent = ollama_upstream.bodies[0]
    assert sent["options"] == {"num_predict": 5} and sent["stream"] is False
