"""OpenAI format: golden tests from documented payloads, client side and upstream side."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from fmt_helpers import aiter_bytes, aiter_list, collect, fixture_bytes, fixture_json, split_at, sse_payloads

from higgs.errors import InvalidRequestError
from higgs.formats.openai import OpenAIFormat, higgs_formats
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatResponse,
    CompletionChoice,
    CompletionResponse,
    EmbeddingResponse,
    ErrorInfo,
    ImageBlock,
    ModelInfo,
    StreamError,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolArgsDelta,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    accumulate,
)

fmt = OpenAIFormat()


def parse(body):
    return fmt.parse_chat(body, {})


def msg(*messages, **fields):
    return {"model": "gpt-4o", "messages": list(messages), **fields}


# -- registration ---------------------------------------------------------------------------------


def test_registers_a_format_spec_with_routes():
    (spec,) = higgs_formats()
    assert spec.name == "openai"
    routes = {(r.method, r.path): r.operation for r in spec.factory().routes()}
    assert routes == {("POST", "/v1/chat/completions"): "chat", ("POST", "/v1/completions"): "completion",
                      ("POST", "/v1/embeddings"): "embedding", ("GET", "/v1/models"): "models",
                      ("GET", "/v1/models/{model_id:.+}"): "models"}
    assert fmt.claims("/v1/chat/completions") and fmt.claims("/nope") and not fmt.claims("/v1/messages")


# -- requests -------------------------------------------------------------------------------------


def test_documented_tools_request():
    req = parse(fixture_json("openai_chat_request_tools.json"))
    assert [b.text for b in req.system] == ["You are a helpful assistant."]
    assert [m.role for m in req.messages] == ["user", "assistant", "user", "user"]
    call = req.messages[1].content[0]
    assert call == ToolUseBlock(id="call_abc123", name="get_current_weather", input={"location": "Boston, MA"})
    result = req.messages[2].content[0]
    assert isinstance(result, ToolResultBlock) and result.tool_use_id == "call_abc123"
    assert result.content == [TextBlock(text='{"temperature": 22, "unit": "celsius"}')]
    image = req.messages[3].content[1]
    assert isinstance(image, ImageBlock) and image.url.startswith("https://") and image.detail == "low"
    assert req.tools[0].name == "get_current_weather" and req.tools[0].input_schema["required"] == ["location"]
    assert req.tool_choice.type == "auto"
    assert req.max_tokens == 512 and req.stop == ["\n\nUser:"]
    assert (req.sampling.temperature, req.sampling.top_p, req.sampling.seed) == (0.7, 0.9, 42)
    assert req.stream and req.include_usage
    assert req.extra == {"store": False, "service_tier": "auto"}


def test_system_and_developer_messages_keep_their_order():
    req = parse(msg({"role": "system", "content": "one"}, {"role": "user", "content": "hi"},
                    {"role": "developer", "content": [{"type": "text", "text": "two"}]}))
    assert [b.text for b in req.system] == ["one", "two"]
    assert len(req.messages) == 1


def test_data_url_image_becomes_inline_image():
    req = parse(msg({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]}))
    assert req.messages[0].content == [ImageBlock(media_type="image/jpeg", data="/9j/4AAQ")]


def test_consecutive_tool_messages_merge_into_one_user_turn():
    req = parse(msg(
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "w", "arguments": '{"c":"Paris"}'}},
            {"id": "b", "type": "function", "function": {"name": "w", "arguments": '{"c":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "rain"}]},
    ))
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert [b.tool_use_id for b in req.messages[2].content] == ["a", "b"]


def test_invalid_tool_arguments_are_a_400():
    body = msg({"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "w", "arguments": "{not json"}}]})
    with pytest.raises(InvalidRequestError) as err:
        parse(body)
    assert err.value.info.param == "messages[0].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"},
         "reasoning_effort"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
         "response_format.type"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequestError) as err:
        parse(body)
    assert err.value.info.param == param
    status, rendered = fmt.render_error(err.value.info)
    assert status == 400 and rendered["error"]["type"] == "invalid_request_error"
    assert rendered["error"]["param"] == param


def test_legacy_functions_and_function_call():
    req = parse(msg(
        {"role": "user", "content": "hi"},
        {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "done"},
        functions=[{"name": "f", "parameters": {"type": "object"}}],
        function_call={"name": "f"},
    ))
    use, result = req.messages[1].content[0], req.messages[2].content[0]
    assert use.id == result.tool_use_id
    assert req.tools[0].name == "f" and req.tool_choice.type == "tool" and req.tool_choice.name == "f"


@pytest.mark.parametrize(("choice", "kind", "name"), [
    ("none", "none", None), ("auto", "auto", None), ("required", "any", None),
    ({"type": "function", "function": {"name": "f"}}, "tool", "f"),
])
def test_tool_choice_forms(choice, kind, name):
    req = parse(msg({"role": "user", "content": "x"}, tools=[{"type": "function", "function": {"name": "f"}}],
                    tool_choice=choice, parallel_tool_calls=False))
    assert (req.tool_choice.type, req.tool_choice.name, req.tool_choice.disable_parallel_tool_use) == (kind, name, True)


@pytest.mark.parametrize(("tools", "choice", "message"), [
    ([], "required", "only allowed when 'tools' are specified"),
    ([], {"type": "function", "function": {"name": "f"}}, "only allowed when 'tools' are specified"),
    ([{"type": "function", "function": {"name": "f"}}], {"type": "function", "function": {"name": "g"}},
     "names the function 'g', which is not in 'tools'"),
])
def test_tool_choice_must_match_the_tools(tools, choice, message):
    """Regression: a forced tool that was not offered (or no tools at all) was silently ignored, as OpenAI 400s."""
    with pytest.raises(InvalidRequestError, match=message) as err:
        parse(msg({"role": "user", "content": "x"}, tools=tools, tool_choice=choice))
    assert err.value.info.param == "tool_choice"
    assert parse(msg({"role": "user", "content": "x"}, tool_choice="none")).tool_choice.type == "none"


def test_sampling_response_format_and_reasoning():
    req = parse(msg({"role": "user", "content": "x"}, presence_penalty=0.5, frequency_penalty=-0.5,
                    logit_bias={"50256": -100}, logprobs=True, top_logprobs=3, n=2, user="u-1", stop="END",
                    max_tokens=9, reasoning_effort="low",
                    response_format={"type": "json_schema", "json_schema": {
                        "name": "Person", "strict": True, "schema": {"type": "object"}}}))
    s = req.sampling
    assert (s.presence_penalty, s.frequency_penalty, s.logit_bias, s.logprobs, s.top_logprobs) == \
        (0.5, -0.5, {50256: -100.0}, True, 3)
    assert (req.n, req.user, req.stop, req.max_tokens) == (2, "u-1", ["END"], 9)
    assert req.reasoning.effort == "low"
    assert (req.response_format.type, req.response_format.name, req.response_format.strict) == \
        ("json_schema", "Person", True)


def test_build_round_trips_documented_request():
    body = fixture_json("openai_chat_request_tools.json")
    req = parse(body)
    built = fmt.build_upstream_chat(req).body
    assert built["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert built["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"location":"Boston, MA"}'
    assert built["messages"][3] == {"role": "tool", "tool_call_id": "call_abc123",
                                    "content": '{"temperature": 22, "unit": "celsius"}'}
    assert built["max_tokens"] == 512 and built["store"] is False and built["service_tier"] == "auto"
    assert parse(built).model_dump(exclude={"extra"}) == req.model_dump(exclude={"extra"})


def test_reasoning_models_get_max_completion_tokens():
    req = parse(msg({"role": "user", "content": "x"}, max_tokens=100))
    assert "max_completion_tokens" in fmt.build_upstream_chat(req.model_copy(update={"model": "o3-mini"})).body
    assert "max_tokens" in fmt.build_upstream_chat(req).body
    assert fmt.build_upstream_chat(req.model_copy(update={"max_tokens": None}),
                                   default_max_tokens=77).body["max_tokens"] == 77


# -- responses ------------------------------------------------------------------------------------


def test_documented_response_parses_and_renders_back():
    body = fixture_json("openai_chat_response.json")
    resp = fmt.parse_upstream_chat(body)
    assert resp.content == [TextBlock(text="Hello! How can I assist you today?")]
    assert resp.stop_reason == "end_turn" and resp.usage.input_tokens == 19 and resp.usage.output_tokens == 10
    out = fmt.render_chat(resp, parse(msg({"role": "user", "content": "hi"})))
    assert out["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["total_tokens"] == 29 and out["id"] == body["id"] and out["object"] == "chat.completion"


def test_documented_tool_call_response():
    resp = fmt.parse_upstream_chat(fixture_json("openai_chat_response_tool_calls.json"))
    assert resp.stop_reason == "tool_use"
    assert resp.content == [ToolUseBlock(id="call_abc123", name="get_current_weather",
                                         input={"location": "Boston, MA"})]
    assert (resp.usage.cached_tokens, resp.usage.reasoning_tokens) == (64, 5)
    out = fmt.render_chat(resp, parse(msg({"role": "user", "content": "hi"})))
    message = out["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "get_current_weather"
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 64}
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_content_round_trip():
    resp = ChatResponse(model="m", content=[ThinkingBlock(thinking="why"), TextBlock(text="because")])
    out = fmt.render_chat(resp, parse(msg({"role": "user", "content": "x"})))
    assert out["choices"][0]["message"]["reasoning_content"] == "why"
    assert fmt.parse_upstream_chat(out).content == resp.content


def test_upstream_invalid_tool_arguments_are_kept_not_lost():
    body = fixture_json("openai_chat_response_tool_calls.json")
    body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{broken"
    assert fmt.parse_upstream_chat(body).content[0].input == {"_raw_arguments": "{broken"}


# -- streams --------------------------------------------------------------------------------------


async def test_documented_text_stream_parses_at_any_boundary():
    body = fixture_bytes("openai_stream_text.sse")
    for step in (1, 2, 7, 64, len(body)):
        events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes(split_at(body, range(0, len(body), step)))))
        resp = accumulate(events)
        assert resp.content == [TextBlock(text="Hello wörld ✓")]
        assert resp.stop_reason == "end_turn"
        assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.cached_tokens) == (9, 3, 4)
        assert isinstance(events[0], StreamStart) and isinstance(events[-1], StreamFinish)


async def test_parallel_tool_call_stream():
    body = fixture_bytes("openai_stream_tool_calls.sse")
    events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body])))
    resp = accumulate(events)
    assert resp.stop_reason == "tool_use"
    assert resp.content == [
        ToolUseBlock(id="call_DdmO9pD3xa9XTPNJ32zg2hcA", name="get_weather", input={"location": "Paris, France"}),
        ToolUseBlock(id="call_2", name="get_time", input={"tz": "CET"}),
    ]


async def test_stream_without_done_or_finish_is_an_error_event():
    body = fixture_bytes("openai_stream_text.sse").split(b"\n\n")[1] + b"\n\n"
    events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body])))
    assert isinstance(events[-1], StreamError) and events[-1].error.status == 502


async def test_error_chunk_mid_stream():
    body = (b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
            b'"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
            b'data: {"error":{"message":"rate limited","type":"rate_limit_error","param":null,"code":null}}\n\n')
    events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body])))
    assert isinstance(events[-1], StreamError) and events[-1].error.kind == "rate_limit"


def canonical_events(include_error=False):
    events = [
        StreamStart(id="chatcmpl-1", model="m", created=5),
        BlockStart(index=0, block=ThinkingBlock()),
        BlockDelta(index=0, delta=ThinkingDelta(thinking="hm")),
        BlockStop(index=0),
        BlockStart(index=1, block=TextBlock(text="")),
        BlockDelta(index=1, delta=TextDelta(text="Hi")),
        BlockStop(index=1),
        BlockStart(index=2, block=ToolUseBlock(id="call_1", name="f")),
        BlockDelta(index=2, delta=ToolArgsDelta(partial_json='{"a"')),
        BlockDelta(index=2, delta=ToolArgsDelta(partial_json=":1}")),
        BlockStop(index=2),
        BlockStart(index=3, block=ToolUseBlock(id="call_2", name="g")),
        BlockStop(index=3),
    ]
    if include_error:
        return [*events, StreamError(error=ErrorInfo(status=529, kind="overloaded", message="busy"))]
    return [*events, StreamFinish(stop_reason="tool_use", usage=Usage(input_tokens=7, output_tokens=3))]


async def test_render_stream_chunks_and_usage():
    req = parse(msg({"role": "user", "content": "x"}, stream=True, stream_options={"include_usage": True}))
    body = b"".join(await collect(fmt.render_chat_stream(aiter_list(canonical_events()), req)))
    payloads = [p for _, p in sse_payloads(body)]
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert {"reasoning_content": "hm"} in deltas and {"content": "Hi"} in deltas
    assert deltas[3]["tool_calls"][0] == {"index": 0, "id": "call_1", "type": "function",
                                          "function": {"name": "f", "arguments": ""}}
    assert deltas[-2]["tool_calls"][0]["index"] == 1  # second call gets the next tool index
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 10
    assert all(c["usage"] is None for c in chunks[:-1])
    # and the rendered bytes parse back to the same answer
    back = accumulate(await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body]))))
    assert back.content == accumulate(canonical_events()).content


async def test_render_stream_error_mid_way():
    req = parse(msg({"role": "user", "content": "x"}, stream=True))
    body = b"".join(await collect(fmt.render_chat_stream(aiter_list(canonical_events(include_error=True)), req)))
    payloads = [p for _, p in sse_payloads(body)]
    assert payloads[-2]["error"]["type"] == "server_error" and payloads[-2]["error"]["code"] == "overloaded"
    assert "usage" not in payloads[0]


async def test_render_stream_provider_exception_becomes_error_event():
    async def broken():
        yield StreamStart(model="m")
        raise RuntimeError("boom with secret sk-123")

    req = parse(msg({"role": "user", "content": "x"}, stream=True))
    body = b"".join(await collect(fmt.render_chat_stream(broken(), req)))
    assert b"sk-123" not in body and b'"error"' in body and body.endswith(b"data: [DONE]\n\n")


# -- completions, embeddings, models, errors ------------------------------------------------------


def test_completions_request_and_response():
    req = fmt.parse_completion({"model": "m", "prompt": [1, 2, 3], "max_tokens": 5, "echo": True, "suffix": "x"})
    assert req.prompt == [[1, 2, 3]] and req.echo and req.extra == {"suffix": "x"}
    assert fmt.parse_completion({"model": "m", "prompt": "hi"}).prompt == ["hi"]
    with pytest.raises(InvalidRequestError):
        fmt.parse_completion({"model": "m", "prompt": [1, "a"]})
    # regression: a number or an object was told "'prompt' must be an array", though a string is fine too
    for wrong, field, parse in ((123, "prompt", fmt.parse_completion), ({"a": 1}, "input", fmt.parse_embedding)):
        with pytest.raises(InvalidRequestError, match=f"'{field}' must be a string, an array of strings"):
            parse({"model": "m", field: wrong})
    out = fmt.render_completion(CompletionResponse(model="m", choices=[CompletionChoice(text="yo",
                                                   stop_reason="max_tokens")], usage=Usage(input_tokens=2,
                                                                                           output_tokens=1)), req)
    assert out["object"] == "text_completion" and out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    assert fmt.parse_upstream_completion(out).choices[0].text == "yo"


async def test_completion_stream_round_trip():
    req = fmt.parse_completion({"model": "m", "prompt": "hi", "stream": True,
                                "stream_options": {"include_usage": True}})
    events = [StreamStart(model="m"), BlockDelta(index=0, delta=TextDelta(text="a")),
              BlockDelta(index=0, delta=TextDelta(text="b")), StreamFinish(usage=Usage(output_tokens=2))]
    body = b"".join(await collect(fmt.render_completion_stream(aiter_list(events), req)))
    parsed = await collect(fmt.parse_upstream_completion_stream(aiter_bytes(split_at(body, range(0, 900, 5)))))
    assert "".join(e.delta.text for e in parsed if isinstance(e, BlockDelta)) == "ab"
    assert parsed[-1].usage.output_tokens == 2


def test_embeddings_float_base64_and_dimensions():
    req = fmt.parse_embedding({"model": "e", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 2})
    resp = EmbeddingResponse(model="e", data=[[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], usage=Usage(input_tokens=2))
    out = fmt.render_embedding(resp, req)
    first = struct.unpack("<2f", base64.b64decode(out["data"][0]["embedding"]))
    assert first == pytest.approx((0.6, 0.8))
    assert out["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert fmt.parse_upstream_embedding(out).data[0] == pytest.approx([0.6, 0.8])
    assert fmt.parse_embedding({"model": "e", "input": [[1, 2]]}).input == [[1, 2]]
    for bad in ({"model": "e"}, {"model": "e", "input": ""}, {"model": "e", "input": "a", "encoding_format": "hex"}):
        with pytest.raises(InvalidRequestError):
            fmt.parse_embedding(bad)


def test_models_list_reads_in_both_sdks():
    import anthropic
    import openai
    from anthropic.pagination import SyncPage as AnthropicPage
    from anthropic.types import ModelInfo as AnthropicModel
    from openai.pagination import SyncPage as OpenAIPage
    from openai.types import Model as OpenAIModel

    out = fmt.render_models([ModelInfo(id="a", owned_by="higgs", created=1)])
    assert out["object"] == "list" and out["data"][0] | {"id": "a", "object": "model", "created": 1,
                                                          "owned_by": "higgs"} == out["data"][0]
    assert openai and OpenAIPage[OpenAIModel].model_validate(out).data[0].owned_by == "higgs"
    assert anthropic and AnthropicPage[AnthropicModel].model_validate(out).data[0].created_at.year == 1970


@pytest.mark.parametrize(("kind", "status", "etype", "out_status"), [
    ("invalid_request", 400, "invalid_request_error", 400),
    ("authentication", 401, "authentication_error", 401),
    ("permission", 403, "permission_error", 403),
    ("not_found", 404, "not_found_error", 404),
    ("rate_limit", 429, "rate_limit_error", 429),
    ("api_error", 500, "server_error", 500),
    ("overloaded", 529, "server_error", 503),
    ("timeout", 504, "timeout", 504),
])
def test_error_rendering(kind, status, etype, out_status):
    code, body = fmt.render_error(ErrorInfo(status=status, kind=kind, message="m"))
    assert code == out_status and body["error"]["type"] == etype
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_upstream_error_parsing_keeps_code_and_retry_after():
    info = fmt.parse_upstream_error(400, json.dumps(fixture_json("openai_error.json")).encode())
    assert (info.kind, info.code, info.param, info.status) == ("context_length_exceeded", "context_length_exceeded",
                                                               "messages", 400)
    info = fmt.parse_upstream_error(429, b'{"error":{"message":"slow down","type":"rate_limit_error"}}',
                                    {"Retry-After": "3"})
    assert info.kind == "rate_limit" and info.retry_after == 3.0
    info = fmt.parse_upstream_error(502, b"<html>Bad gateway</html>")
    assert info.kind == "upstream_unreachable" and "Bad gateway" in info.message
    info = fmt.parse_upstream_error(422, b'{"detail":"field required"}')
    assert info.kind == "invalid_request" and info.message == "field required"


async def test_tool_block_that_starts_with_its_input_keeps_it():
    events = [StreamStart(model="m"), BlockStart(index=0, block=ToolUseBlock(id="c", name="f", input={"x": 1})),
              BlockStop(index=0), StreamFinish(stop_reason="tool_use")]
    req = parse(msg({"role": "user", "content": "x"}, stream=True))
    body = b"".join(await collect(fmt.render_chat_stream(aiter_list(events), req)))
    back = accumulate(await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body]))))
    assert back.content == [ToolUseBlock(id="c", name="f", input={"x": 1})]
