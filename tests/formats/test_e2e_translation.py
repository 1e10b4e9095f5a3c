"""End to end: official SDK clients -> higgs -> a strict fake upstream of the OTHER wire format.

The upstream records every request and checks it against its vendor's rules (``fmt_upstream``); each test
also checks what the SDK made of the translated answer, streamed (with the SDK's accumulating helpers) and not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anthropic
import higgs_anthropic
import higgs_openai
import openai
import pytest
from fmt_helpers import fixture_json
from fmt_upstream import Reply, StrictUpstream

from higgs.testing import build_app, serve_app

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


_clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = []


def openai_client(url: str, key: str = "k") -> openai.AsyncOpenAI:
    """An OpenAI SDK client for higgs, closed when the surrounding ``higgs_to`` ends."""
    _clients.append(openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0))
    return _clients[-1]  # type: ignore[return-value]


def anthropic_client(url: str, key: str = "k") -> anthropic.AsyncAnthropic:
    """An Anthropic SDK client for higgs, closed when the surrounding ``higgs_to`` ends."""
    _clients.append(anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0))
    return _clients[-1]  # type: ignore[return-value]


@asynccontextmanager
async def higgs_to(upstream_format: str, **provider: object) -> AsyncIterator[tuple[str, StrictUpstream]]:
    """higgs routing every model to a strict fake upstream speaking ``upstream_format``."""
    async with StrictUpstream() as upstream:
        config = {"provider": {"up": {"url": upstream.url, "format": upstream_format, **provider}},
                  "default": {"provider": "up"}}
        app = build_app(config, plugins=[("openai", higgs_openai), ("anthropic", higgs_anthropic)])
        async with serve_app(app) as url:
            try:
                yield url, upstream
            finally:
                while _clients:
                    await _clients.pop().close()
    assert upstream.problems == [], upstream.problems


# -- OpenAI SDK -> higgs -> Anthropic upstream ------------------------------------------------------


async def test_openai_client_plain_chat_to_anthropic():
    async with higgs_to("anthropic", default_max_tokens=1500) as (url, up):
        client = openai_client(url, "sk-test")
        up.script.append(Reply(text="Bonjour!", input_tokens=40, cached_tokens=30, output_tokens=3))
        answer = await client.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "French."},
                      {"role": "user", "content": "Hello"}],
            temperature=0.2, stop=["###"], user="alice")
    assert answer.choices[0].message.content == "Bonjour!" and answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == 40 and answer.usage.prompt_tokens_details.cached_tokens == 30
    path, body, headers = up.received[-1]
    assert path == "/v1/messages" and headers["x-api-key"] == "sk-test"
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "French."}]
    assert body["max_tokens"] == 1500 and body["stop_sequences"] == ["###"]
    assert body["metadata"] == {"user_id": "alice"}


async def test_openai_client_stream_helper_with_thinking_and_parallel_tools():
    async with higgs_to("anthropic") as (url, up):
        client = openai_client(url, "k")
        up.script.append(Reply(thinking="Two cities, two calls.", text="Checking both.",
                               tools=[("toolu_01A", "get_weather", {"city": "Paris"}),
                                      ("toolu_01B", "get_weather", {"city": "Rome"})]))
        async with client.chat.completions.stream(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
            tools=[WEATHER_TOOL], stream_options={"include_usage": True},
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_completion()
    message = final.choices[0].message
    assert "content.delta" in kinds and "tool_calls.function.arguments.done" in kinds
    assert message.content == "Checking both." and final.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("toolu_01A", "get_weather", {"city": "Paris"}), ("toolu_01B", "get_weather", {"city": "Rome"})]
    assert message.model_extra.get("reasoning_content") == "Two cities, two calls."
    assert final.usage.completion_tokens == 7
    body = up.last
    assert body["stream"] is True and body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"]["required"] == ["city"]


async def test_openai_client_tool_results_and_images_reach_anthropic_valid():
    async with higgs_to("anthropic") as (url, up):
        client = openai_client(url, "k")
        answer = await client.chat.completions.create(
            model="claude-sonnet-4-5", tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False,
            messages=[
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this and the weather?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call:1/a", "type": "function", "function": {"name": "get_weather",
                                                                        "arguments": '{"city":"Paris"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city":"Rome"}'}}]},
                {"role": "tool", "tool_call_id": "call:1/a", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
                {"role": "user", "content": "Summarise."},
            ])
    assert answer.choices[0].message.content == "Hello from upstream"
    body = up.last
    user, assistant, results = body["messages"]
    assert user["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    ids = [b["id"] for b in assistant["content"]]
    assert [b["tool_use_id"] for b in results["content"][:2]] == ids and ids[1] == "call_2"
    assert results["content"][2] == {"type": "text", "text": "Summarise."}
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_openai_client_errors_from_anthropic_upstream():
    async with higgs_to("anthropic", retry_max_wait=0) as (url, up):
        client = openai_client(url, "k")
        up.script.append(Reply(status=529, error={"type": "error", "error": {"type": "overloaded_error",
                                                                             "message": "Overloaded"}}))
        with pytest.raises(openai.InternalServerError) as overloaded:
            await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
        assert overloaded.value.status_code == 503 and "Overloaded" in overloaded.value.message
        up.script.append(Reply(status=400, error={"type": "error", "error": {
            "type": "invalid_request_error", "message": "messages: text content blocks must be non-empty"}}))
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
        assert bad.value.body["type"] == "invalid_request_error"
        before = len(up.received)
        with pytest.raises(openai.BadRequestError) as n_err:
            await client.chat.completions.create(model="claude", n=2, messages=[{"role": "user", "content": "hi"}])
        assert "n > 1" in n_err.value.message and len(up.received) == before  # never sent upstream
        with pytest.raises(openai.BadRequestError) as args_err:
            await client.chat.completions.create(model="claude", messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                      "function": {"name": "f", "arguments": "{oops"}}]}])
        assert args_err.value.body["param"] == "messages[1].tool_calls[0].function.arguments"


async def test_openai_client_sees_mid_stream_error():
    async with higgs_to("anthropic") as (url, up):
        client = openai_client(url, "k")
        up.script.append(Reply(text="partial answer", fail_mid_stream=True))
        seen = []
        with pytest.raises(openai.APIError) as err:
            stream = await client.chat.completions.create(model="claude", stream=True,
                                                          messages=[{"role": "user", "content": "hi"}])
            async for chunk in stream:
                seen.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert "".join(seen) == "partial answer" and "Overloaded" in str(err.value)


# -- Anthropic SDK -> higgs -> OpenAI upstream ------------------------------------------------------


async def test_anthropic_client_plain_message_to_openai():
    async with higgs_to("openai") as (url, up):
        client = anthropic_client(url, "sk-ant-test")
        up.script.append(Reply(text="Hi there", input_tokens=50, cached_tokens=20, output_tokens=2))
        message = await client.messages.create(
            model="gpt-4o", max_tokens=300,
            system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "Hello"}], stop_sequences=["END"],
            extra_body={"top_k": 3, "temperature": 0.5},  # this SDK release no longer types them
            metadata={"user_id": "bob"})
    assert message.content[0].text == "Hi there" and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (30, 20)
    path, body, headers = up.received[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-ant-test"
    assert body["messages"] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}]
    assert body["max_tokens"] == 300 and body["stop"] == ["END"] and body["user"] == "bob"
    assert "top_k" not in body


async def test_anthropic_client_stream_helper_with_reasoning_and_tools():
    async with higgs_to("openai") as (url, up):
        client = anthropic_client(url, "k")
        up.script.append(Reply(thinking="Let me look it up.", text="One moment.",
                               tools=[("call_abc", "get_weather", {"city": "Oslo"}),
                                      ("call:def", "get_weather", {"city": "Bergen"})]))
        async with client.messages.stream(
            model="gpt-4o", max_tokens=500, messages=[{"role": "user", "content": "Weather in Oslo and Bergen?"}],
            tools=[{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_TOOL["function"][
                "parameters"]}],
        ) as stream:
            types = [event.type async for event in stream]
            final = await stream.get_final_message()
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == "Let me look it up." and final.content[1].text == "One moment."
    assert final.content[2].id == "call_abc" and final.content[2].input == {"city": "Oslo"}
    assert final.content[3].input == {"city": "Bergen"} and final.content[3].id.startswith("call_def_")
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 7 and final.usage.input_tokens == 11
    body = up.last
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["tools"][0]["function"]["parameters"]["required"] == ["city"]


async def test_anthropic_client_tool_result_with_image_to_openai():
    async with higgs_to("openai") as (url, up):
        client = anthropic_client(url, "k")
        message = await client.messages.create(model="gpt-4o", max_tokens=100, messages=[
            {"role": "user", "content": "Screenshot please"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "use the tool", "signature": "c2ln"},
                {"type": "tool_use", "id": "toolu_01", "name": "screenshot", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": [
                    {"type": "text", "text": "captured"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
                {"type": "text", "text": "What do you see?"}]},
        ], tools=[{"name": "screenshot", "input_schema": {"type": "object", "properties": {}}}])
    assert message.content[0].text == "Hello from upstream"
    messages = up.last["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[1]["tool_calls"][0]["id"] == "toolu_01" and "reasoning_content" not in messages[1]
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_01", "content": "captured"}
    assert messages[3]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    assert messages[3]["content"][-1] == {"type": "text", "text": "What do you see?"}


async def test_anthropic_client_errors_from_openai_upstream():
    async with higgs_to("openai", retry_max_wait=0) as (url, up):
        client = anthropic_client(url, "k")
        up.script.append(Reply(status=401, error={"error": {"message": "Incorrect API key provided",
                                                            "type": "invalid_request_error", "param": None,
                                                            "code": "invalid_api_key"}}))
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await client.messages.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert auth.value.body["error"]["type"] == "authentication_error"
        async with aiohttp.ClientSession() as http:  # the SDK itself refuses to send this one
            async with http.post(url + "/v1/messages", json={"model": "gpt-4o", "messages": []}) as response:
                assert response.status == 400
                assert await response.json() == {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "max_tokens: Field required"}}
        up.script.append(Reply(text="half", fail_mid_stream=True))
        with pytest.raises(anthropic.APIError):
            async with client.messages.stream(model="gpt-4o", max_tokens=10,
                                              messages=[{"role": "user", "content": "hi"}]) as stream:
                async for _ in stream:
                    pass


async def test_claude_code_traffic_to_openai_upstream_raw():
    body = fixture_json("anthropic_request_claude_code.json")
    async with higgs_to("openai") as (url, up), aiohttp.ClientSession() as http:
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01",
                   "anthropic-beta": "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"}
        async with http.post(url + "/v1/messages", json={**body, "model": "gpt-4o"}, headers=headers) as response:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = await response.read()
    assert raw.count(b"event: message_stop") == 1
    sent = up.last
    assert [t["function"]["name"] for t in sent["tools"]] == ["Bash", "Read"]
    assert [m["role"] for m in sent["messages"]].count("system") == 3


async def test_models_list_reads_in_both_sdks():
    async with higgs_to("openai", models=["gpt-a", "gpt-b"]) as (url, _up):
        assert [m.id async for m in openai_client(url).models.list()] == ["gpt-a", "gpt-b"]
        page = [m async for m in anthropic_client(url).models.list()]
    assert [(m.id, m.type, m.display_name) for m in page] == [("gpt-a", "model", "gpt-a"), ("gpt-b", "model", "gpt-b")]


async def test_tool_loop_over_two_turns_keeps_ids_matching_both_ways():
    async with higgs_to("openai") as (url, up):
        client = anthropic_client(url)
        up.script.append(Reply(text=None, tools=[("call:7|x", "get_weather", {"city": "Oslo"})]))
        tools = [{"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}]
        first = await client.messages.create(model="gpt-4o", max_tokens=100, tools=tools,
                                             messages=[{"role": "user", "content": "Oslo?"}])
        call = first.content[0]
        assert call.type == "tool_use" and all(c.isalnum() or c in "_-" for c in call.id)
        second = await client.messages.create(model="gpt-4o", max_tokens=100, tools=tools, messages=[
            {"role": "user", "content": "Oslo?"},
            {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "-3C"}]}])
        assert second.content[0].text == "Hello from upstream"
        sent = up.last["messages"]
        assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == call.id

    async with higgs_to("anthropic") as (url, up):
        client = openai_client(url)
        up.script.append(Reply(text=None, tools=[("toolu_01XY", "get_weather", {"city": "Oslo"})]))
        first = await client.chat.completions.create(model="claude", tools=[WEATHER_TOOL],
                                                     messages=[{"role": "user", "content": "Oslo?"}])
        message = first.choices[0].message
        await client.chat.completions.create(model="claude", tools=[WEATHER_TOOL], messages=[
            {"role": "user", "content": "Oslo?"}, message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "-3C"}])
        sent = up.last["messages"]
        assert sent[1]["content"][0]["id"] == sent[2]["content"][0]["tool_use_id"] == "toolu_01XY"
