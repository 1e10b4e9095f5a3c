"""Golden tests from Ollama's documented payloads (docs/api.md): client side and upstream side."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import ollama
import pytest
from higgs_format_ollama.format import OllamaFormat

from higgs.messages import (
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    ImageBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    accumulate,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


async def chunks(data: bytes, size: int = 29):
    for cut in range(0, len(data), size):
        yield data[cut:cut + size]


def test_documented_tool_request():
    request = OllamaFormat().parse_chat(fixture("chat_request_tools.json"), {})
    assert request.model == "llama3.2" and request.stream is False
    tool = request.tools[0]
    assert tool.name == "get_current_weather" and tool.input_schema["required"] == ["location", "format"]
    assert request.messages[0].text() == "What is the weather today in Paris?"


def test_documented_history_with_images():
    request = OllamaFormat().parse_chat(fixture("chat_request_history_images.json"), {})
    assert request.stream is True  # Ollama streams unless told otherwise
    assert [m.role for m in request.messages] == ["user", "assistant", "user"]
    image = request.messages[0].content[0]
    assert isinstance(image, ImageBlock) and image.media_type == "image/png"
    assert request.sampling.seed == 101 and request.sampling.temperature == 0


def test_documented_generate_request():
    request = OllamaFormat().generate.parse_chat(fixture("generate_request.json"), {})
    s = request.sampling
    assert request.system_text() == "You are a physics teacher."
    assert request.messages == [Message(role="user", content=[TextBlock(text="Why is the sky blue?")])]
    assert (s.seed, s.top_k, s.top_p, s.temperature, s.repetition_penalty) == (42, 20, 0.9, 0.8, 1.2)
    assert (s.presence_penalty, s.frequency_penalty, s.min_p) == (1.5, 1.0, 0.0)
    assert request.max_tokens == 100 and request.stop == ["\n", "user:"]
    assert request.response_format.type == "json_object"
    assert request.extra == {}  # num_ctx and num_keep are engine options with no canonical counterpart


def test_documented_tool_response_upstream():
    response = OllamaFormat().parse_upstream_chat(fixture("chat_response_tools.json"))
    call = response.content[0]
    assert isinstance(call, ToolUseBlock) and call.name == "get_current_weather"
    assert call.input == {"format": "celsius", "location": "Paris, FR"}
    assert response.stop_reason == "tool_use"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (122, 33)


def test_documented_thinking_response_upstream():
    response = OllamaFormat().parse_upstream_chat(fixture("chat_response_thinking.json"))
    assert response.content == [ThinkingBlock(thinking="The user is asking a classic question; the canonical "
                                                       "reply is 42."), TextBlock(text="The answer is 42.")]


async def test_documented_stream_upstream():
    data = (FIXTURES / "chat_stream.ndjson").read_bytes()
    events = [e async for e in OllamaFormat().parse_upstream_chat_stream(chunks(data))]
    folded = accumulate(events)
    assert folded.content == [TextBlock(text="The sky is blue.")]
    assert folded.stop_reason == "end_turn" and folded.usage.output_tokens == 282


def test_render_matches_documented_shape():
    request = OllamaFormat().parse_chat(fixture("chat_request_tools.json"), {})
    answer = OllamaFormat().render_chat(ChatResponse(model="llama3.2", stop_reason="tool_use", content=[
        ToolUseBlock(id="call_1", name="get_current_weather", input={"format": "celsius", "location": "Paris, FR"})]),
        request)
    documented = fixture("chat_response_tools.json")
    assert set(documented) <= set(answer)
    assert answer["message"]["tool_calls"][0]["function"]["arguments"] == \
        documented["message"]["tool_calls"][0]["function"]["arguments"]
    assert answer["done"] is True and answer["done_reason"] == "stop"


def test_build_upstream_chat_round_trips_tools_and_options():
    request = ChatRequest(model="llama3.2", system=[TextBlock(text="sys")], max_tokens=50, stop=["x"],
                          messages=[Message(role="user", content=[TextBlock(text="hi"),
                                                                  ImageBlock(media_type="image/png", data="AAA")]),
                                    Message(role="assistant",
                                            content=[ToolUseBlock(id="c1", name="f", input={"a": 1})]),
                                    Message(role="user", content=[ToolResultBlock(tool_use_id="c1",
                                                                                  content=[TextBlock(text="ok")])])],
                          extra={"vendor": True}, source_format="openai")
    body = OllamaFormat().build_upstream_chat(request).body
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi", "images": ["AAA"]},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "f",
                                                                                     "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "ok", "tool_name": "f", "tool_call_id": "c1"},
    ]
    assert body["options"] == {"num_predict": 50, "stop": ["x"]} and "vendor" not in body


def test_upstream_error():
    info = OllamaFormat().parse_upstream_error(404, b'{"error":"model \\"llama9\\" not found, try pulling it first"}')
    assert info.kind == "not_found" and "llama9" in info.message


async def test_midstream_failure_is_an_error_line(gateway, local):
    from higgs.messages import StreamError

    original = local.chat_stream

    async def failing(request, call):
        async for event in original(request, call):
            yield event
            if event.type == "block_delta":
                yield StreamError(error=ErrorInfo(status=500, message="the model failed to generate a response"))
                return

    local.chat_stream = failing
    async with gateway() as url:
        async with aiohttp.ClientSession() as http, http.post(url + "/api/chat", json={
                "model": "local-model", "messages": [{"role": "user", "content": "x"}]}) as raw:
            lines = [json.loads(line) for line in (await raw.read()).splitlines()]
        client = ollama.AsyncClient(host=url)
        with pytest.raises(ollama.ResponseError) as caught:
            async for _ in await client.chat(model="local-model", stream=True,
                                             messages=[{"role": "user", "content": "x"}]):
                pass
    assert lines[0]["message"]["content"] == "Hello"
    assert lines[-1] == {"error": "the model failed to generate a response"}
    assert "failed to generate" in caught.value.error
