"""Bad input is a clear 400 in the caller's format, never a crash: fuzz the parsers with wrong shapes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from higgs.errors import InvalidRequestError
from higgs.formats.anthropic import AnthropicFormat
from higgs.formats.openai import OpenAIFormat

oa, an = OpenAIFormat(), AnthropicFormat()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

leaf = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False) | \
    st.sampled_from(["", "x", "user", "assistant", "tool", "system", "text", "image", "image_url", "tool_use",
                     "tool_result", "thinking", "function", "auto", "none", "required", "any", "base64", "url",
                     "data:image/png;base64,AA", "json_schema", "enabled", "{}", "{bad"])
keys = st.sampled_from(["role", "content", "type", "text", "image_url", "url", "source", "media_type", "data", "id",
                        "name", "input", "arguments", "function", "tool_calls", "tool_call_id", "tool_use_id",
                        "is_error", "thinking", "signature", "parameters", "input_schema", "json_schema", "schema",
                        "budget_tokens", "detail", "cache_control", "include_usage", "effort", "format"])
json_value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
                          max_leaves=12)
openai_fields = st.sampled_from(["model", "messages", "tools", "functions", "tool_choice", "function_call",
                                 "parallel_tool_calls", "response_format", "stop", "max_tokens",
                                 "max_completion_tokens", "temperature", "top_p", "seed", "logit_bias", "logprobs",
                                 "top_logprobs", "n", "user", "reasoning_effort", "stream", "stream_options",
                                 "prompt", "input", "encoding_format", "dimensions", "echo"])
anthropic_fields = st.sampled_from(["model", "messages", "system", "max_tokens", "tools", "tool_choice",
                                    "stop_sequences", "temperature", "top_p", "top_k", "thinking", "metadata",
                                    "stream", "output_config"])


def _body(fields):
    return st.fixed_dictionaries({"model": st.just("m")}, optional={"max_tokens": st.just(10)}).flatmap(
        lambda base: st.dictionaries(fields, json_value, max_size=6).map(lambda extra: {**base, **extra}))


@SETTINGS
@given(_body(openai_fields))
def test_openai_parsers_never_crash(body):
    for parse in (lambda b: oa.parse_chat(b, {}), oa.parse_completion, oa.parse_embedding):
        try:
            parse(body)
        except InvalidRequestError as err:
            assert err.status == 400 and oa.render_error(err.info)[1]["error"]["message"]


@SETTINGS
@given(_body(anthropic_fields))
def test_anthropic_parser_never_crashes(body):
    try:
        request = an.parse_chat(body, {})
    except InvalidRequestError as err:
        assert an.render_error(err.info)[0] == 400
        return
    for build in (an.build_upstream_chat, oa.build_upstream_chat):  # and a parsed request always builds
        build(request)


source = st.fixed_dictionaries({"type": st.sampled_from(["base64", "url", "file"])},
                               optional={"media_type": leaf, "data": leaf, "url": leaf})
block = st.tuples(st.dictionaries(keys, json_value, max_size=5), st.none() | source).flatmap(
    lambda d: st.sampled_from(["text", "image", "image_url", "tool_use", "tool_result", "thinking",
                               "redacted_thinking", "document", "refusal"]).map(
        lambda t: {**d[0], "type": t, **({"source": d[1]} if d[1] else {})}))
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system", "developer", "function"])},
    optional={"content": st.none() | st.text(max_size=5) | st.lists(block, max_size=3),
              "tool_calls": st.lists(st.dictionaries(keys, json_value, max_size=4), max_size=2),
              "tool_call_id": leaf, "name": leaf, "function_call": json_value, "reasoning_content": leaf})


@SETTINGS
@given(st.lists(message, min_size=1, max_size=4), st.sampled_from(["openai", "anthropic"]))
def test_structured_messages_never_crash(messages, client):
    fmt, other = (oa, an) if client == "openai" else (an, oa)
    try:
        request = fmt.parse_chat({"model": "m", "max_tokens": 10, "messages": messages}, {})
    except InvalidRequestError as err:
        assert fmt.render_error(err.info)[0] == 400
        return
    fmt.build_upstream_chat(request)
    other.build_upstream_chat(request.model_copy(update={"n": 1}))


async def test_unreadable_upstream_answers_are_502_not_crashes():
    from fmt_helpers import aiter_bytes, collect

    from higgs.messages import StreamError

    for fmt, body in ((oa, b'data: {"id":"x","choices":"nope"}\n\n'),
                      (an, b'event: content_block_start\ndata: {"type":"content_block_start","index":"a"}\n\n')):
        events = await collect(fmt.parse_upstream_chat_stream(aiter_bytes([body])))
        assert isinstance(events[-1], StreamError) and events[-1].error.status == 502
    for fmt, answer in ((oa, {"choices": [{"message": {"tool_calls": [5]}}]}), (oa, []),
                        (an, {"content": "text", "usage": 3}), (an, {"content": [{"type": "tool_use", "input": 7}]})):
        try:
            result = fmt.parse_upstream_chat(answer)
        except ValueError as err:  # the provider turns this into a 502
            assert "unreadable" in str(err) or "validation" in str(err)
            continue
        assert result.content is not None


async def test_unreadable_completion_and_embedding_answers():
    from fmt_helpers import aiter_bytes, collect

    for answer in ({"choices": [5]}, {"choices": "x"}):
        with pytest.raises(ValueError, match="unreadable"):
            oa.parse_upstream_completion(answer)
    for answer in ({"data": [{"index": 0}]}, {"data": [7]}):
        with pytest.raises(ValueError, match="unreadable"):
            oa.parse_upstream_embedding(answer)
    events = await collect(oa.parse_upstream_completion_stream(aiter_bytes([
        b'data: {"id":"c","choices":[5, {"index":"x","text":"hi","finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'])))
    assert events[-1].type == "finish" and events[1].delta.text == "hi"
