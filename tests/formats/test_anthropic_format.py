"""Anthropic format: golden tests from documented payloads and real Claude Code traffic."""

from __future__ import annotations

import json

import pytest
from fmt_helpers import aiter_bytes, aiter_list, collect, fixture_bytes, fixture_json, split_at, sse_payloads

from higgs.errors import InvalidRequestError
from higgs.formats.anthropic import AnthropicFormat, higgs_formats
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatResponse,
    ErrorInfo,
    ImageBlock,
    ModelInfo,
    SignatureDelta,
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
    UnknownBlock,
    Usage,
    accumulate,
)

fmt = AnthropicFormat()


def parse(body):
    return fmt.parse_chat(body, {"anthropic-version": "2023-06-01", "anthropic-beta": "prompt-caching-2024-07-31"})


def msg(*messages, **fields):
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": list(messages), **fields}


def test_registers_a_format_spec_with_routes():
    (spec,) = higgs_formats()
    assert spec.name == "anthropic"
    routes = {(r.method, r.path): r.operation for r in spec.factory().routes()}
    assert routes == {("POST", "/v1/messages"): "chat", ("POST", "/v1/messages/count_tokens"): "count_tokens"}
    assert fmt.claims("/v1/messages") and fmt.claims("/v1/messages/count_tokens")
    assert not fmt.claims("/v1/chat/completions")


def test_claude_code_request_is_accepted_whole():
    req = parse(fixture_json("anthropic_request_claude_code.json"))
    assert [b.text[:10] for b in req.system] == ["You are Cl", "You are an", "The user s"]
    assert req.system[0].cache_control == {"type": "ephemeral"}
    assert [m.role for m in req.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert req.messages[0].content[1].cache_control == {"type": "ephemeral"}
    thinking = req.messages[1].content[0]
    assert isinstance(thinking, ThinkingBlock) and thinking.signature == "ErUBCkYIBRgCIkB0"
    assert req.messages[2].content[0] == ToolResultBlock(tool_use_id="toolu_01XyZ",
                                                         content=[TextBlock(text="README.md\nsrc\n")])
    unknown = [b.type for b in req.messages[3].content if isinstance(b, UnknownBlock)]
    assert unknown == ["server_tool_use", "web_search_tool_result"]
    assert req.messages[3].content[2] == ThinkingBlock(redacted=True, data="EmwKAhgBEgy3va3pzix/LafPsn4a")
    assert req.messages[4].content[0] == ToolResultBlock(tool_use_id="toolu_02")  # no content: fine
    assert isinstance(req.messages[4].content[1], UnknownBlock)
    assert [t.name for t in req.tools] == ["Bash", "Read", "web_search"]
    assert req.tools[2].extra == {"type": "web_search_20250305", "max_uses": 5}
    assert req.reasoning.enabled and req.reasoning.budget_tokens == 31999
    assert req.user == "user_abc_account_123_session_456" and req.max_tokens == 32000


def test_claude_code_request_round_trips_in_its_own_format():
    body = fixture_json("anthropic_request_claude_code.json")
    built = fmt.build_upstream_chat(parse(body)).body
    # system-role messages were folded into the system prompt; everything else keeps its meaning
    assert built["messages"][:2] == body["messages"][:2]
    assert built["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_01XyZ",
                                                  "content": [{"type": "text", "text": "README.md\nsrc\n"}]}
    assert built["messages"][3:] == body["messages"][4:]  # unknown blocks pass through verbatim
    assert parse(built).messages == parse(body).messages
    assert built["system"] == [*body["system"], {"type": "text", "text": "The user switched to plan mode."}]
    assert built["tools"] == body["tools"]
    for key in ("tool_choice", "thinking", "metadata", "temperature", "stream", "max_tokens"):
        assert built[key] == body[key]


def test_max_tokens_is_required_except_for_count_tokens():
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(InvalidRequestError) as err:
        parse(body)
    assert err.value.info.param == "max_tokens"
    status, rendered = fmt.render_error(err.value.info)
    assert status == 400 and rendered == {"type": "error", "error": {"type": "invalid_request_error",
                                                                     "message": "max_tokens: Field required"}}
    assert fmt.parse_count_tokens(body, {}).max_tokens is None


def test_images_base64_and_url_and_tool_result_with_image():
    req = parse(msg({"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "tool_result", "tool_use_id": "t", "is_error": True, "content": [
            {"type": "text", "text": "see"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}]},
    ]}))
    image, url, result = req.messages[0].content
    assert image == ImageBlock(media_type="image/png", data="iVBORw0KGgo=")
    assert url == ImageBlock(url="https://example.com/cat.jpg")
    assert result.is_error and result.content[1] == ImageBlock(media_type="image/jpeg", data="/9j/")


@pytest.mark.parametrize(("body", "param"), [
    ({"max_tokens": 5, "messages": []}, "model"),
    ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens"),
    ({"model": "m", "max_tokens": 5}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
    ({"model": "m", "max_tokens": 5, "messages": [], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"model": "m", "max_tokens": 5, "messages": [], "thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": [], "thinking": {}}, "thinking.type"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
     "messages.0.content.0.type"),
    ({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"name": "f", "input_schema": {"type": "object"}},
                                                                {"name": "g"}]}, "tools.1.input_schema"),
    ({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"type": "custom", "name": "f"}]},
     "tools.0.input_schema"),
])
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequestError) as err:
        parse(body)
    assert err.value.info.param == param


def test_tool_choice_and_sampling():
    req = parse(msg({"role": "user", "content": "x"}, tools=[{"name": "f", "input_schema": {"type": "object"}}],
                    tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
                    stop_sequences=["STOP"], temperature=0.2, top_p=0.9, top_k=40, thinking={"type": "disabled"}))
    assert (req.tool_choice.type, req.tool_choice.name, req.tool_choice.disable_parallel_tool_use) == \
        ("tool", "f", True)
    assert req.stop == ["STOP"] and (req.sampling.temperature, req.sampling.top_p, req.sampling.top_k) == \
        (0.2, 0.9, 40)
    assert req.reasoning.enabled is False


def test_consecutive_same_role_turns_are_merged_and_empty_ones_dropped():
    req = parse(msg({"role": "user", "content": "a"}, {"role": "user", "content": ""},
                    {"role": "user", "content": [{"type": "text", "text": "b"}]},
                    {"role": "assistant", "content": "c"}))
    built = fmt.build_upstream_chat(req).body["messages"]
    assert built == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "c"}]}]


def test_documented_response_and_usage_conversion():
    body = fixture_json("anthropic_response.json")
    resp = fmt.parse_upstream_chat(body)
    assert resp.content == [TextBlock(text="Hi! My name is Claude.")]
    # canonical input counts every prompt token: fresh + cache reads + cache writes
    assert (resp.usage.input_tokens, resp.usage.cached_tokens, resp.usage.cache_creation_tokens) == (3195, 1000, 100)
    out = fmt.render_chat(resp, parse(msg({"role": "user", "content": "x"})))
    assert out == body


def test_documented_tool_use_response_with_thinking():
    body = fixture_json("anthropic_response_tool_use.json")
    resp = fmt.parse_upstream_chat(body)
    assert resp.stop_reason == "tool_use"
    assert resp.content[0].signature.startswith("EqQB") and resp.content[2].input["unit"] == "celsius"
    out = fmt.render_chat(resp, parse(msg({"role": "user", "content": "x"})))
    assert out["content"] == body["content"]


async def test_documented_streams_parse_at_any_boundary():
    body = fixture_bytes("anthropic_stream_tool_use.sse")
    for step in (1, 3, 17, 256, len(body)):
        events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes(split_at(body, range(0, len(body), step)))))
        resp = accumulate(events)
        assert resp.content == [
            ThinkingBlock(thinking="Let me check the weather.",
                          signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"),
            TextBlock(text="Okay, let's check the weather for San Francisco, CA:"),
            ToolUseBlock(id="toolu_01T1x1fJ34qAmk2tNTrN7Up6", name="get_weather",
                         input={"location": "San Francisco, CA"}),
        ]
        assert resp.stop_reason == "tool_use" and resp.usage.output_tokens == 89 and resp.usage.input_tokens == 472
    text = accumulate(await collect(fmt.parse_upstream_chat_stream(aiter_bytes([fixture_bytes(
        "anthropic_stream_text.sse")]))))
    assert text.content == [TextBlock(text="Hello!")]
    assert (text.usage.input_tokens, text.usage.cached_tokens, text.usage.output_tokens) == (35, 10, 15)


async def test_error_event_mid_stream():
    events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes([fixture_bytes("anthropic_stream_error.sse")])))
    assert isinstance(events[-1], StreamError)
    assert (events[-1].error.kind, events[-1].error.status) == ("overloaded", 529)


async def test_truncated_stream_is_an_error():
    body = fixture_bytes("anthropic_stream_text.sse")
    events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body[: body.index(b"event: message_delta")]])))
    assert isinstance(events[-1], StreamError) and events[-1].error.status == 502


async def test_render_stream_event_sequence():
    events = [
        StreamStart(id="msg_1", model="m", usage=Usage(input_tokens=30, cached_tokens=20)),
        BlockStart(index=4, block=ThinkingBlock()),  # provider indexes need not start at 0
        BlockDelta(index=4, delta=ThinkingDelta(thinking="hm")),
        BlockDelta(index=4, delta=SignatureDelta(signature="sig")),
        BlockStop(index=4),
        BlockStart(index=7, block=UnknownBlock(type="x")),  # nothing to show: skipped with its deltas
        BlockDelta(index=7, delta=TextDelta(text="hidden")),
        BlockStart(index=9, block=ToolUseBlock(id="call.1", name="f")),
        BlockDelta(index=9, delta=ToolArgsDelta(partial_json='{"a":1}')),
        StreamFinish(stop_reason="tool_use", usage=Usage(input_tokens=30, cached_tokens=20, output_tokens=5)),
    ]
    req = parse(msg({"role": "user", "content": "x"}, stream=True))
    body = b"".join(await collect(fmt.render_chat_stream(aiter_list(events), req)))
    payloads = sse_payloads(body)
    assert all(name == data["type"] for name, data in payloads)
    assert [name for name, _ in payloads] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    start = payloads[0][1]["message"]
    assert start["usage"] == {"input_tokens": 10, "output_tokens": 0, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 20}
    assert [d["index"] for _, d in payloads if "index" in d] == [0, 0, 0, 0, 1, 1, 1]
    tool = payloads[6][1]["content_block"]
    assert tool["type"] == "tool_use" and tool["id"] == "call_1_" + tool["id"].rsplit("_", 1)[1]
    assert payloads[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert payloads[-2][1]["usage"]["output_tokens"] == 5
    back = accumulate(await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body]))))
    assert back.content[0] == ThinkingBlock(thinking="hm", signature="sig")
    assert back.content[1].input == {"a": 1}


async def test_render_stream_error_and_early_end():
    req = parse(msg({"role": "user", "content": "x"}, stream=True))
    events = [StreamStart(model="m"), StreamError(error=ErrorInfo(status=429, kind="rate_limit", message="slow"))]
    payloads = sse_payloads(b"".join(await collect(fmt.render_chat_stream(aiter_list(events), req))))
    assert payloads[-1] == ("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
    ended = sse_payloads(b"".join(await collect(fmt.render_chat_stream(aiter_list([StreamStart(model="m")]), req))))
    assert ended[-1][0] == "error" and ended[-1][1]["error"]["type"] == "api_error"


def test_count_tokens_both_sides():
    req = fmt.parse_count_tokens(msg({"role": "user", "content": "x"}, tools=[{"name": "f", "input_schema": {}}],
                                     temperature=0.5, stream=True), {})
    call = fmt.build_upstream_count_tokens(req)
    assert call.path == "/v1/messages/count_tokens"
    assert set(call.body) == {"model", "messages", "tools"}
    assert fmt.render_count_tokens(12) == {"input_tokens": 12}
    assert fmt.parse_upstream_count_tokens({"input_tokens": 12}) == 12


def test_models_page():
    out = fmt.render_models([ModelInfo(id="a", owned_by="x", created=0)])
    assert out["data"][0] == {"type": "model", "id": "a", "display_name": "a", "created_at": "1970-01-01T00:00:00Z",
                              "lifecycle": "active", "max_input_tokens": None}
    assert out["has_more"] is False


@pytest.mark.parametrize(("kind", "etype", "status"), [
    ("invalid_request", "invalid_request_error", 400), ("authentication", "authentication_error", 401),
    ("permission", "permission_error", 403), ("not_found", "not_found_error", 404),
    ("request_too_large", "request_too_large", 413), ("rate_limit", "rate_limit_error", 429),
    ("api_error", "api_error", 500), ("overloaded", "overloaded_error", 529),
])
def test_error_rendering(kind, etype, status):
    assert fmt.render_error(ErrorInfo(status=status, kind=kind, message="m")) == \
        (status, {"type": "error", "error": {"type": etype, "message": "m"}})


def test_upstream_error_parsing():
    info = fmt.parse_upstream_error(404, json.dumps(fixture_json("anthropic_error.json")).encode())
    assert (info.kind, info.status) == ("not_found", 404)
    info = fmt.parse_upstream_error(529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
                                    {"retry-after": "12"})
    assert (info.kind, info.retry_after) == ("overloaded", 12.0)
    info = fmt.parse_upstream_error(400, b'{"type":"error","error":{"type":"invalid_request_error",'
                                    b'"message":"prompt is too long: 210000 tokens > 200000 maximum"}}')
    assert info.kind == "context_length_exceeded"


def test_auth_headers():
    assert fmt.auth_headers("sk-ant") == {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}
    assert fmt.client_credential({"x-api-key": "k"}) == "k"


def test_render_response_sanitizes_tool_ids_and_drops_empty_text():
    resp = ChatResponse(model="m", content=[TextBlock(text=""), ToolUseBlock(id="call:7", name="f")],
                        stop_reason="tool_use")
    out = fmt.render_chat(resp, parse(msg({"role": "user", "content": "x"})))
    assert len(out["content"]) == 1 and out["content"][0]["id"].startswith("call_7_")


def test_newer_thinking_modes_and_output_config():
    body = msg({"role": "user", "content": "x"}, thinking={"type": "adaptive", "display": "omitted"},
               output_config={"effort": "max", "format": {"type": "json_schema", "schema": {"type": "object"}}})
    req = parse(body)
    assert req.reasoning.enabled and req.reasoning.effort == "high"
    assert req.response_format.type == "json_schema" and req.response_format.json_schema == {"type": "object"}
    built = fmt.build_upstream_chat(req).body
    assert built["thinking"] == body["thinking"] and built["output_config"] == body["output_config"]
    between = parse(msg({"role": "user", "content": "x"}, thinking={"type": "between_tools"}))
    assert between.reasoning.enabled and fmt.build_upstream_chat(between).body["thinking"] == {"type": "between_tools"}


def test_typed_server_tools_need_no_input_schema():
    """Anthropic requires ``input_schema`` for custom tools only; versioned server tools have none."""
    req = parse(msg({"role": "user", "content": "x"},
                    tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]))
    assert req.tools[0].name == "web_search" and req.tools[0].extra["type"] == "web_search_20250305"
