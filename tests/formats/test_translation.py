"""Translation through the canonical model: parse with one format, build/render with the other."""

from __future__ import annotations

import json

import pytest
from fmt_helpers import aiter_bytes, collect, fixture_bytes, fixture_json, sse_payloads

from higgs.errors import InvalidRequestError
from higgs.formats._common import anthropic_tool_id
from higgs.formats.anthropic import AnthropicFormat
from higgs.formats.openai import OpenAIFormat
from higgs.messages import ErrorInfo

oa, an = OpenAIFormat(), AnthropicFormat()


def openai_req(*messages, **fields):
    return oa.parse_chat({"model": "claude-sonnet-4-5", "messages": list(messages), **fields}, {})


def anthropic_req(*messages, **fields):
    return an.parse_chat({"model": "gpt-4o", "max_tokens": 256, "messages": list(messages), **fields}, {})


# -- OpenAI client -> Anthropic upstream ----------------------------------------------------------


def test_openai_request_to_anthropic_body():
    req = oa.parse_chat(fixture_json("openai_chat_request_tools.json"), {})
    body = an.build_upstream_chat(req).body
    assert body["system"] == "You are a helpful assistant."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "call_abc123", "name": "get_current_weather",
                                               "input": {"location": "Boston, MA"}}]
    # tool result first, then the next user text and image merged into the same turn
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text", "image"]
    assert body["messages"][2]["content"][2]["source"]["type"] == "url"
    assert body["tools"][0] == {"name": "get_current_weather",
                                "description": "Get the current weather in a given location",
                                "input_schema": fixture_json("openai_chat_request_tools.json")["tools"][0]["function"][
                                    "parameters"]}
    assert body["tool_choice"] == {"type": "auto"}
    assert body["max_tokens"] == 512 and body["stop_sequences"] == ["\n\nUser:"] and body["stream"] is True
    assert body["temperature"] == 0.7 and "top_p" not in body  # recent Claude models reject both together
    for dropped in ("seed", "store", "service_tier", "stream_options"):
        assert dropped not in body


def test_several_system_prompts_keep_order():
    req = openai_req({"role": "system", "content": "a"}, {"role": "developer", "content": "b"},
                     {"role": "user", "content": "hi"})
    assert an.build_upstream_chat(req).body["system"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]


def test_max_tokens_default_when_openai_omits_it():
    req = openai_req({"role": "user", "content": "hi"})
    assert an.build_upstream_chat(req, default_max_tokens=1234).body["max_tokens"] == 1234
    assert an.build_upstream_chat(req).body["max_tokens"] == 4096


def test_n_greater_than_one_is_a_clear_400():
    with pytest.raises(InvalidRequestError) as err:
        an.build_upstream_chat(openai_req({"role": "user", "content": "hi"}, n=3))
    assert err.value.info.param == "n" and "n > 1" in str(err.value)


def test_sampling_without_counterpart_is_dropped_not_sent():
    req = openai_req({"role": "user", "content": "hi"}, temperature=1.6, seed=1, presence_penalty=0.2,
                     frequency_penalty=0.1, logit_bias={"1": 2}, logprobs=True, top_logprobs=2, user="u",
                     response_format={"type": "json_object"}, stop="X")
    body = an.build_upstream_chat(req).body
    assert body["temperature"] == 1.0  # clamped to Anthropic's range
    assert body["metadata"] == {"user_id": "u"} and body["stop_sequences"] == ["X"]
    assert set(body) == {"model", "max_tokens", "messages", "temperature", "metadata", "stop_sequences"}


def test_tool_ids_are_sanitized_consistently():
    req = openai_req(
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "functions.get:0", "type": "function",
                                              "function": {"name": "get", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "functions.get:0", "content": "ok"},
    )
    body = an.build_upstream_chat(req).body
    use_id = body["messages"][1]["content"][0]["id"]
    assert use_id == body["messages"][2]["content"][0]["tool_use_id"] == anthropic_tool_id("functions.get:0")
    assert use_id != anthropic_tool_id("functions.get.0")  # distinct ids never collide
    assert all(c.isalnum() or c in "_-" for c in use_id)


def test_parallel_tools_and_tool_choice_mapping():
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = an.build_upstream_chat(openai_req({"role": "user", "content": "x"}, tools=tools, tool_choice="required",
                                             parallel_tool_calls=False)).body
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    body = an.build_upstream_chat(openai_req({"role": "user", "content": "x"}, tools=tools,
                                             tool_choice={"type": "function", "function": {"name": "f"}})).body
    assert body["tool_choice"] == {"type": "tool", "name": "f"}


def test_reasoning_effort_becomes_a_thinking_budget_below_max_tokens():
    body = an.build_upstream_chat(openai_req({"role": "user", "content": "x"}, reasoning_effort="high",
                                             max_completion_tokens=4000, temperature=0.3)).body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3999}
    assert "temperature" not in body  # not allowed with thinking
    old = openai_req({"role": "user", "content": "x"}, reasoning_effort="high")
    assert "thinking" not in an.build_upstream_chat(old.model_copy(update={"model": "claude-3-5-haiku"})).body


def test_reasoning_content_in_history_is_not_sent_without_signature():
    req = openai_req({"role": "user", "content": "x"},
                     {"role": "assistant", "content": "y", "reasoning_content": "thought"},
                     {"role": "user", "content": "z"})
    assert an.build_upstream_chat(req).body["messages"][1]["content"] == [{"type": "text", "text": "y"}]


def test_empty_content_turns():
    req = openai_req({"role": "user", "content": "x"}, {"role": "assistant", "content": ""},
                     {"role": "user", "content": "y"})
    assert an.build_upstream_chat(req).body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]


# -- Anthropic client -> OpenAI upstream ----------------------------------------------------------


def test_claude_code_request_to_openai_body():
    req = an.parse_chat(fixture_json("anthropic_request_claude_code.json"), {})
    body = oa.build_upstream_chat(req.model_copy(update={"model": "gpt-4o"})).body
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "system", "system", "user", "assistant", "tool", "user", "assistant", "tool"]
    assert body["messages"][4]["tool_calls"][0] == {"id": "toolu_01XyZ", "type": "function", "function": {
        "name": "Bash", "arguments": '{"command":"ls","description":"List files"}'}}
    assert body["messages"][5] == {"role": "tool", "tool_call_id": "toolu_01XyZ", "content": "README.md\nsrc\n"}
    assert body["messages"][8] == {"role": "tool", "tool_call_id": "toolu_02", "content": ""}
    assert [t["function"]["name"] for t in body["tools"]] == ["Bash", "Read"]  # server tools dropped
    assert body["user"] == "user_abc_account_123_session_456"
    assert body["max_tokens"] == 32000 and "thinking" not in body and "reasoning_effort" not in body
    assert all("cache_control" not in json.dumps(m) for m in body["messages"])


def test_tool_result_images_and_errors_toward_openai():
    req = anthropic_req(
        {"role": "user", "content": "shot?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": [
            {"type": "text", "text": "partial"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}}]}]},
    )
    messages = oa.build_upstream_chat(req).body["messages"]
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: partial"}
    assert messages[3]["role"] == "user"
    assert messages[3]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}}


def test_anthropic_sampling_toward_openai():
    req = anthropic_req({"role": "user", "content": "x"}, temperature=0.5, top_k=5, stop_sequences=["a", "b"],
                        tools=[{"name": "f", "input_schema": {"type": "object"}}],
                        tool_choice={"type": "any", "disable_parallel_tool_use": True})
    body = oa.build_upstream_chat(req).body
    assert body["temperature"] == 0.5 and "top_k" not in body and body["stop"] == ["a", "b"]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False


# -- responses both ways --------------------------------------------------------------------------


def test_anthropic_response_to_openai_client():
    resp = an.parse_upstream_chat(fixture_json("anthropic_response_tool_use.json"))
    out = oa.render_chat(resp, openai_req({"role": "user", "content": "x"}))
    message = out["choices"][0]["message"]
    assert message["reasoning_content"] == "The user wants the weather; I should call the tool."
    assert message["content"] == "I'll check the current weather in San Francisco for you."
    assert message["tool_calls"][0]["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"location": "San Francisco, CA",
                                                                              "unit": "celsius"}
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    usage = oa.render_chat(an.parse_upstream_chat(fixture_json("anthropic_response.json")),
                           openai_req({"role": "user", "content": "x"}))["usage"]
    assert usage["prompt_tokens"] == 3195 and usage["prompt_tokens_details"]["cached_tokens"] == 1000


def test_openai_response_to_anthropic_client():
    resp = oa.parse_upstream_chat(fixture_json("openai_chat_response_tool_calls.json"))
    out = an.render_chat(resp, anthropic_req({"role": "user", "content": "x"}))
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [{"type": "tool_use", "id": "call_abc123", "name": "get_current_weather",
                               "input": {"location": "Boston, MA"}}]
    assert out["usage"] == {"input_tokens": 18, "output_tokens": 17, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 64}


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_stop_reasons_openai_to_anthropic(finish, stop):
    body = fixture_json("openai_chat_response.json")
    body["choices"][0]["finish_reason"] = finish
    assert an.render_chat(oa.parse_upstream_chat(body), anthropic_req())["stop_reason"] == stop


@pytest.mark.parametrize(("stop", "finish"), [("end_turn", "stop"), ("max_tokens", "length"),
                                              ("stop_sequence", "stop"), ("tool_use", "tool_calls")])
def test_stop_reasons_anthropic_to_openai(stop, finish):
    body = fixture_json("anthropic_response.json")
    body["stop_reason"] = stop
    out = oa.render_chat(an.parse_upstream_chat(body), openai_req({"role": "user", "content": "x"}))
    assert out["choices"][0]["finish_reason"] == finish


# -- streams both ways, incrementally -------------------------------------------------------------


async def _counting(source, seen):
    async for event in source:
        seen.append(event)
        yield event


async def test_anthropic_stream_to_openai_client_is_incremental():
    seen: list = []
    events = _counting(an.parse_upstream_chat_stream(aiter_bytes([fixture_bytes("anthropic_stream_tool_use.sse")])),
                       seen)
    req = openai_req({"role": "user", "content": "x"}, stream=True, stream_options={"include_usage": True})
    out, consumed_at = [], []
    async for piece in oa.render_chat_stream(events, req):
        out.append(piece)
        consumed_at.append(len(seen))
    # every output chunk is produced before the next input event is pulled (no buffering)
    assert consumed_at == sorted(consumed_at) and len(set(consumed_at)) > len(consumed_at) // 2
    payloads = [p for _, p in sse_payloads(b"".join(out))]
    deltas = [p["choices"][0]["delta"] for p in payloads[:-1] if p["choices"]]
    assert {"reasoning_content": "Let me check the weather."} in deltas
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"location": "San Francisco, CA"}
    assert payloads[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert payloads[-2]["usage"]["prompt_tokens"] == 472 and payloads[-1] == "[DONE]"


async def test_openai_stream_to_anthropic_client():
    events = oa.parse_upstream_chat_stream(aiter_bytes([fixture_bytes("openai_stream_tool_calls.sse")]))
    req = anthropic_req({"role": "user", "content": "x"}, stream=True)
    payloads = sse_payloads(b"".join(await collect(an.render_chat_stream(events, req))))
    starts = [d["content_block"] for n, d in payloads if n == "content_block_start"]
    assert [s["name"] for s in starts] == ["get_weather", "get_time"]
    assert [d["index"] for n, d in payloads if n == "content_block_start"] == [0, 1]
    args = [d["delta"]["partial_json"] for n, d in payloads if n == "content_block_delta" and d["index"] == 0]
    assert json.loads("".join(args)) == {"location": "Paris, France"}
    assert payloads[-2][1]["delta"]["stop_reason"] == "tool_use" and payloads[-1][0] == "message_stop"


async def test_anthropic_error_mid_stream_reaches_openai_client():
    events = an.parse_upstream_chat_stream(aiter_bytes([fixture_bytes("anthropic_stream_error.sse")]))
    req = openai_req({"role": "user", "content": "x"}, stream=True)
    payloads = [p for _, p in sse_payloads(b"".join(await collect(oa.render_chat_stream(events, req))))]
    assert payloads[1]["choices"][0]["delta"] == {"content": "Partial"}
    assert payloads[-2]["error"]["code"] == "overloaded" and payloads[-1] == "[DONE]"


def test_overloaded_renders_503_for_openai_clients():
    info = an.parse_upstream_error(529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert oa.render_error(info)[0] == 503 and an.render_error(info)[0] == 529
    info = oa.parse_upstream_error(401, b'{"error":{"message":"bad key","type":"invalid_request_error",'
                                   b'"code":"invalid_api_key"}}')
    assert an.render_error(info) == (401, {"type": "error", "error": {"type": "authentication_error",
                                                                      "message": "bad key"}})
    assert an.render_error(ErrorInfo(status=502, kind="upstream_unreachable", message="down"))[0] == 502


def test_json_schema_response_format_toward_anthropic():
    fmt = {"type": "json_schema", "json_schema": {"name": "P", "schema": {"type": "object"}}}
    body = an.build_upstream_chat(openai_req({"role": "user", "content": "x"}, response_format=fmt)).body
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    old = openai_req({"role": "user", "content": "x"}, response_format=fmt).model_copy(
        update={"model": "claude-3-5-haiku"})
    assert "output_config" not in an.build_upstream_chat(old).body
    back = oa.build_upstream_chat(an.parse_chat({"model": "gpt-4o", "max_tokens": 5, "messages": [], "output_config": {
        "format": {"type": "json_schema", "schema": {"type": "object"}}}}, {})).body
    assert back["response_format"] == {"type": "json_schema", "json_schema": {"name": "response",
                                                                               "schema": {"type": "object"}}}


def test_anthropic_thinking_toward_openai_only_for_reasoning_models():
    body = {"model": "gpt-4o", "max_tokens": 5000, "messages": [{"role": "user", "content": "x"}],
            "thinking": {"type": "enabled", "budget_tokens": 20000}, "output_config": {"effort": "low"}}
    assert "reasoning_effort" not in oa.build_upstream_chat(an.parse_chat(body, {})).body
    built = oa.build_upstream_chat(an.parse_chat({**body, "model": "o4-mini"}, {})).body
    assert built["reasoning_effort"] == "low" and built["max_completion_tokens"] == 5000
    del body["output_config"]
    assert oa.build_upstream_chat(an.parse_chat({**body, "model": "gpt-5"}, {})).body["reasoning_effort"] == "high"


def test_conversation_opening_with_assistant_gets_a_user_turn_first():
    body = an.build_upstream_chat(openai_req({"role": "system", "content": "pirate"},
                                             {"role": "assistant", "content": "Arrr, how may I help?"},
                                             {"role": "user", "content": "hi"})).body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "."}]
    only_system = an.build_upstream_chat(openai_req({"role": "system", "content": "Say hi."})).body
    assert [m["role"] for m in only_system["messages"]] == ["user"]


def test_strict_tools_both_ways():
    tools = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object"}}}]
    body = an.build_upstream_chat(openai_req({"role": "user", "content": "x"}, tools=tools)).body
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object"}, "strict": True}]
    old = openai_req({"role": "user", "content": "x"}, tools=tools).model_copy(update={"model": "claude-3-haiku"})
    assert "strict" not in an.build_upstream_chat(old).body["tools"][0]
    back = oa.build_upstream_chat(an.parse_chat({"model": "gpt-4o", "max_tokens": 5, "messages": [],
                                                 "tools": body["tools"]}, {})).body
    assert back["tools"][0]["function"]["strict"] is True


def test_prefill_keeps_the_final_assistant_turn_without_trailing_space():
    body = an.build_upstream_chat(openai_req({"role": "user", "content": "JSON please"},
                                             {"role": "assistant", "content": "{\n  "})).body
    assert body["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "{"}]}
    blank = an.build_upstream_chat(openai_req({"role": "user", "content": "x"}, {"role": "assistant", "content": " "}))
    assert [m["role"] for m in blank.body["messages"]] == ["user"]


def test_thinking_is_dropped_mid_tool_loop_without_signed_thinking():
    history = [{"role": "user", "content": "x"},
               {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                     "function": {"name": "f", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    body = an.build_upstream_chat(openai_req(*history, reasoning_effort="high", max_tokens=9000)).body
    assert "thinking" not in body
    fresh = an.build_upstream_chat(openai_req(history[0], reasoning_effort="high", max_tokens=9000)).body
    assert fresh["thinking"]["type"] == "enabled"
