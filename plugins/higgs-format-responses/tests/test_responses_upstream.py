"""Upstream side: documented Responses payloads parsed to canonical, and providers with ``format = "responses"``."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
from higgs_format_responses.format import ResponsesFormat

from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    Message,
    Reasoning,
    ResponseFormat,
    StreamFinish,
    StreamStart,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    accumulate,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


async def chunks(data: bytes, size: int = 37):
    for cut in range(0, len(data), size):
        yield data[cut:cut + size]


def test_golden_text_response():
    response = ResponsesFormat().parse_upstream_chat(fixture("response_text.json"))
    assert response.id == "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    assert response.model == "gpt-4.1-2025-04-14" and response.stop_reason == "end_turn"
    assert response.content[0].text.startswith("In a peaceful grove")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (36, 87)


def test_golden_reasoning_and_function_call():
    response = ResponsesFormat().parse_upstream_chat(fixture("response_reasoning_function_call.json"))
    thinking, call = response.content
    assert isinstance(thinking, ThinkingBlock) and thinking.thinking.startswith("**Checking the weather**")
    assert isinstance(call, ToolUseBlock)
    assert (call.id, call.name, call.input) == ("call_OSXKe3prvdAMY8jw87fX0ZCJ", "get_weather",
                                                {"location": "Paris, France"})
    assert response.stop_reason == "tool_use"
    assert response.usage.cached_tokens == 64 and response.usage.reasoning_tokens == 128


async def test_golden_text_stream():
    data = (FIXTURES / "stream_text.sse").read_bytes()
    events = [e async for e in ResponsesFormat().parse_upstream_chat_stream(chunks(data))]
    assert isinstance(events[0], StreamStart) and events[0].id.startswith("resp_67c9")
    assert [type(e) for e in events[1:]] == [BlockStart, BlockDelta, BlockDelta, BlockStop, StreamFinish]
    folded = accumulate(events)
    assert folded.content[0].text == "Hi there!" and folded.usage.output_tokens == 11


async def test_golden_function_call_stream():
    data = (FIXTURES / "stream_function_call.sse").read_bytes()
    events = [e async for e in ResponsesFormat().parse_upstream_chat_stream(chunks(data, 11))]
    folded = accumulate(events)
    assert folded.content == [ToolUseBlock(id="call_1234xyz", name="get_weather", input={"location": "Paris, France"})]
    assert folded.stop_reason == "tool_use" and folded.usage.input_tokens == 57


def test_golden_error():
    body = (FIXTURES / "error_not_found.json").read_bytes()
    info = ResponsesFormat().parse_upstream_error(404, body, {"retry-after": "3"})
    assert info.kind == "not_found" and info.code == "model_not_found" and "gpt-9" in info.message
    assert info.retry_after == 3.0


def test_build_upstream_request_is_stateless_and_complete():
    request = ChatRequest(
        model="gpt-up", system=[TextBlock(text="Be terse.")], max_tokens=64, stop=["END"],
        messages=[
            Message(role="user", content=[TextBlock(text="Weather?")]),
            Message(role="assistant", content=[ThinkingBlock(thinking="hmm"), TextBlock(text="Checking."),
                                               ToolUseBlock(id="c1", name="weather", input={"city": "Oslo"})]),
            Message(role="user", content=[ToolResultBlock(tool_use_id="c1", content=[TextBlock(text="-3C")]),
                                          TextBlock(text="Thanks")]),
        ],
        tools=[Tool(name="weather", description="w", input_schema={"type": "object", "properties": {}})],
        tool_choice=ToolChoice(type="tool", name="weather", disable_parallel_tool_use=True),
        response_format=ResponseFormat(type="json_schema", json_schema={"type": "object"}, name="out"),
        reasoning=Reasoning(budget_tokens=4000), stream=True, extra={"vendor": 1}, source_format="openai")
    call = ResponsesFormat().build_upstream_chat(request)
    body = call.body
    assert call.path == "/v1/responses" and body["store"] is False and body["stream"] is True
    assert body["instructions"] == "Be terse." and body["max_output_tokens"] == 64
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "-3C"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
    ]
    assert body["tools"] == [{"type": "function", "name": "weather", "description": "w",
                              "parameters": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "function", "name": "weather"} and body["parallel_tool_calls"] is False
    assert body["text"] == {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}}
    assert body["reasoning"] == {"effort": "medium"}
    assert "vendor" not in body and "stop" not in body  # another format's extras never leak


async def test_openai_sdk_to_responses_upstream(remote_config, gateway, upstream):
    upstream.text = "Bonjour tout le monde"
    async with gateway(remote_config(upstream, "responses")) as url:
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
        full = await api.chat.completions.create(model="gpt-up", max_tokens=20, messages=[
            {"role": "system", "content": "Speak French."}, {"role": "user", "content": "Hello"}])
        stream = await api.chat.completions.create(model="gpt-up", stream=True,
                                                   messages=[{"role": "user", "content": "Hello"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        upstream.call_tool = True
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        called = await api.chat.completions.create(model="gpt-up", tools=tools,
                                                   messages=[{"role": "user", "content": "Find it"}])
    assert full.choices[0].message.content == "Bonjour tout le monde"
    assert full.usage.prompt_tokens == 9 and full.usage.completion_tokens == 4
    assert text == "Bonjour tout le monde"
    first = upstream.bodies[0]
    assert upstream.paths[0] == "/v1/responses"
    assert first["instructions"] == "Speak French." and first["max_output_tokens"] == 20 and first["store"] is False
    assert first["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]
    call = called.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"command": "ls"}
    assert called.choices[0].finish_reason == "tool_calls"


async def test_anthropic_sdk_to_responses_upstream_stream_tool(remote_config, gateway, upstream):
    upstream.call_tool = True
    upstream.arguments = {"path": "/tmp"}
    async with gateway(remote_config(upstream, "responses")) as url:
        api = anthropic.AsyncAnthropic(base_url=url, api_key="client-key", max_retries=0)
        async with api.messages.stream(model="gpt-up", max_tokens=100, messages=[{"role": "user", "content": "ls"}],
                                       tools=[{"name": "list_dir", "input_schema": {"type": "object"}}]) as stream:
            final = await stream.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "list_dir" and block.input == {"path": "/tmp"}
    assert final.stop_reason == "tool_use"
    assert upstream.bodies[-1]["tools"][0]["name"] == "list_dir" and upstream.bodies[-1]["stream"] is True


async def test_responses_client_to_responses_upstream_is_passthrough(remote_config, gateway, upstream):
    async with gateway(remote_config(upstream, "responses")) as url, aiohttp.ClientSession() as http:
        body = {"model": "gpt-up", "input": "hi", "previous_response_id": "resp_owned_by_upstream",
                "client_metadata": {"a": "b"}}
        async with http.post(url + "/v1/responses", json=body) as response:
            assert response.status == 200
            assert response.headers["x-higgs-provider"] == "up"
            answer = await response.json()
    # The upstream owns that id: higgs forwards it instead of refusing it, and forwards the body untouched.
    assert upstream.bodies[-1] == body
    assert answer["id"] == "resp_up1"


async def test_openai_provider_plugin_with_responses_format(upstream):
    """The real ``openai`` provider kind, configured with ``format = "responses"``."""
    higgs_openai = pytest.importorskip("higgs_openai")
    import higgs_format_responses

    from higgs.testing import build_app, serve_app

    config = {"provider": {"oai": {"kind": "openai", "url": upstream.url + "/v1", "format": "responses",
                                   "api_key": "sk-upstream"}}, "default": {"provider": "oai"}}
    app = build_app(config, plugins=[("openai", higgs_openai), ("responses-format", higgs_format_responses)])
    async with serve_app(app) as url:
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)
        reply = await api.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hi from upstream"
    assert upstream.paths[-1] == "/v1/responses" and upstream.bodies[-1]["model"] == "gpt-5"
