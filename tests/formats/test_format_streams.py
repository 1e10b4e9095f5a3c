"""Streams survive any chunking: render canonical events, cut the bytes anywhere, parse them back."""

from __future__ import annotations

import json

import pytest
from fmt_helpers import aiter_bytes, aiter_list, collect, split_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from higgs.formats.anthropic import AnthropicFormat
from higgs.formats.openai import OpenAIFormat
from higgs.messages import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    SignatureDelta,
    StreamFinish,
    StreamStart,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolArgsDelta,
    ToolUseBlock,
    Usage,
    accumulate,
)

pieces = st.text(min_size=1, max_size=12)  # any unicode, including multi-byte characters and newlines


@st.composite
def canonical_streams(draw):
    events: list = [StreamStart(id="msg_1", model="m", usage=Usage(input_tokens=draw(st.integers(0, 99))))]
    for index in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "thinking", "tool"]))
        if kind == "text":
            events.append(BlockStart(index=index, block=TextBlock(text="")))
            events += [BlockDelta(index=index, delta=TextDelta(text=t)) for t in draw(st.lists(pieces, max_size=4))]
        elif kind == "thinking":
            events.append(BlockStart(index=index, block=ThinkingBlock()))
            events += [BlockDelta(index=index, delta=ThinkingDelta(thinking=t))
                       for t in draw(st.lists(pieces, min_size=1, max_size=3))]
            events.append(BlockDelta(index=index, delta=SignatureDelta(signature="sig")))
        else:
            events.append(BlockStart(index=index, block=ToolUseBlock(id=f"toolu_{index}", name="f")))
            value = draw(st.text(max_size=20))
            arguments = "{\"v\": " + json.dumps(value) + "}"
            cuts = sorted(draw(st.lists(st.integers(0, len(arguments)), max_size=4)))
            events += [BlockDelta(index=index, delta=ToolArgsDelta(partial_json=p))
                       for p in (arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)], strict=True)) if p]
        events.append(BlockStop(index=index))
    events.append(StreamFinish(stop_reason="end_turn", usage=Usage(input_tokens=5, output_tokens=7)))
    return events


def _expected(events, *, keep_signature: bool):
    resp = accumulate(events)
    content = []
    for block in resp.content:
        if isinstance(block, TextBlock) and not block.text:
            continue
        if isinstance(block, ThinkingBlock) and not keep_signature:
            block = block.model_copy(update={"signature": None})
        content.append(block)
    return content


def _merge_text(content):
    """OpenAI streams have one text and one reasoning channel: adjacent blocks of a kind read as one."""
    merged: list = []
    for block in content:
        if merged and type(block) is type(merged[-1]) and isinstance(block, TextBlock):
            merged[-1] = TextBlock(text=merged[-1].text + block.text)
        elif merged and type(block) is type(merged[-1]) and isinstance(block, ThinkingBlock):
            merged[-1] = ThinkingBlock(thinking=merged[-1].thinking + block.thinking)
        else:
            merged.append(block)
    return merged


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(events=canonical_streams(), cuts=st.lists(st.integers(0, 3000), max_size=25))
async def test_anthropic_stream_any_chunking(events, cuts):
    fmt = AnthropicFormat()
    request = ChatRequest(model="m", stream=True)
    body = b"".join(await collect(fmt.render_chat_stream(aiter_list(events), request)))
    parsed = await collect(fmt.parse_upstream_chat_stream(aiter_bytes(split_at(body, cuts))))
    resp = accumulate(parsed)
    assert [b for b in resp.content if not (isinstance(b, TextBlock) and not b.text)] == \
        _expected(events, keep_signature=True)
    assert resp.usage.output_tokens == 7 and isinstance(parsed[-1], StreamFinish)


@SETTINGS
@given(events=canonical_streams(), cuts=st.lists(st.integers(0, 3000), max_size=25))
async def test_openai_stream_any_chunking(events, cuts):
    fmt = OpenAIFormat()
    request = ChatRequest(model="m", stream=True, include_usage=True)
    body = b"".join(await collect(fmt.render_chat_stream(aiter_list(events), request)))
    parsed = await collect(fmt.parse_upstream_chat_stream(aiter_bytes(split_at(body, cuts))))
    resp = accumulate(parsed)
    assert _merge_text(resp.content) == _merge_text(_expected(events, keep_signature=False))
    assert resp.usage.output_tokens == 7 and isinstance(parsed[-1], StreamFinish)



@pytest.mark.parametrize(("fmt", "end"), [(OpenAIFormat(), b"data: [DONE]"),
                                         (AnthropicFormat(), b"event: message_stop")])
async def test_renderers_let_the_provider_finish_and_clean_up(fmt, end):
    cleaned: list[str] = []

    async def provider():
        try:
            yield StreamStart(model="m")
            yield StreamFinish()
            yield StreamFinish()  # anything after the finish is ignored, not rendered
        finally:
            cleaned.append("done")

    body = b"".join(await collect(fmt.render_chat_stream(provider(), ChatRequest(model="m", stream=True))))
    assert cleaned == ["done"] and body.count(end) == 1
