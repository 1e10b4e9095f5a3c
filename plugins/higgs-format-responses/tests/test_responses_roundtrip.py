"""Both directions of the format agree: what the upstream side builds, the client side parses back, and what
the client side renders (full or streamed), the upstream side parses back."""

from __future__ import annotations

import asyncio

from higgs_format_responses.format import ResponsesFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from higgs.messages import (
    ChatRequest,
    ChatResponse,
    Message,
    ResponseFormat,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    accumulate,
)

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
name = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
args = st.dictionaries(name, st.one_of(st.integers(), text, st.booleans()), max_size=3)


@st.composite
def conversations(draw: st.DrawFn) -> ChatRequest:
    tools = draw(st.lists(name, min_size=0, max_size=3, unique=True))
    messages: list[Message] = []
    for turn in range(draw(st.integers(1, 4))):
        messages.append(Message(role="user", content=[TextBlock(text=draw(text))]))
        if tools and draw(st.booleans()):
            call = ToolUseBlock(id=f"call_{turn}", name=draw(st.sampled_from(tools)), input=draw(args))
            messages.append(Message(role="assistant", content=[TextBlock(text=draw(text)), call]))
            messages.append(Message(role="user", content=[ToolResultBlock(tool_use_id=call.id,
                                                                          content=[TextBlock(text=draw(text))])]))
            messages[-1].content.append(TextBlock(text=draw(text)))
        messages.append(Message(role="assistant", content=[TextBlock(text=draw(text))]))
    return ChatRequest(model="m", system=[TextBlock(text=draw(text))], messages=messages,
                       tools=[Tool(name=t, description="d", input_schema={"type": "object", "properties": {}})
                              for t in tools],
                       max_tokens=draw(st.integers(1, 9999)),
                       response_format=draw(st.sampled_from([None, ResponseFormat(type="json_object")])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_upstream_body_parses_back(request):
    fmt = ResponsesFormat()
    body = fmt.build_upstream_chat(request).body
    parsed = fmt.parse_chat(body, {})
    assert parsed.system_text() == request.system_text()
    assert parsed.messages == request.messages
    assert [t.name for t in parsed.tools] == [t.name for t in request.tools]
    assert parsed.max_tokens == request.max_tokens and parsed.response_format == request.response_format


blocks = st.lists(st.one_of(text.map(lambda t: TextBlock(text=t)), text.map(lambda t: ThinkingBlock(thinking=t)),
                            st.builds(lambda n, a, i: ToolUseBlock(id=f"call_{i}", name=n, input=a), name, args,
                                      st.integers(0, 999))), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(blocks, st.sampled_from(["end_turn", "max_tokens", "tool_use"]))
def test_rendered_response_parses_back(content, stop):
    fmt = ResponsesFormat()
    request = fmt.parse_chat({"model": "m", "input": "hi"}, {})
    if stop == "end_turn" and any(isinstance(b, ToolUseBlock) for b in content):
        stop = "tool_use"
    response = ChatResponse(model="m", content=content, stop_reason=stop, usage=Usage(input_tokens=3, output_tokens=4))
    back = fmt.parse_upstream_chat(fmt.render_chat(response, request))
    assert back.content == content and back.usage == response.usage
    assert back.stop_reason == (stop if stop != "tool_use" or any(isinstance(b, ToolUseBlock) for b in content)
                                else "end_turn")


@settings(max_examples=40, deadline=None)
@given(blocks)
def test_rendered_stream_parses_back(content):
    fmt = ResponsesFormat()
    request = fmt.parse_chat({"model": "m", "input": "hi", "stream": True}, {})
    stop = "tool_use" if any(isinstance(b, ToolUseBlock) for b in content) else "end_turn"
    response = ChatResponse(model="m", content=content, stop_reason=stop, usage=Usage(input_tokens=3, output_tokens=4))

    async def run() -> ChatResponse:
        from higgs.messages import (
            BlockDelta,
            BlockStart,
            BlockStop,
            StreamFinish,
            StreamStart,
            TextDelta,
            ThinkingDelta,
            ToolArgsDelta,
        )

        async def events():
            yield StreamStart(model="m")
            for i, block in enumerate(response.content):
                if isinstance(block, TextBlock):
                    yield BlockStart(index=i, block=TextBlock(text=""))
                    yield BlockDelta(index=i, delta=TextDelta(text=block.text))
                elif isinstance(block, ThinkingBlock):
                    yield BlockStart(index=i, block=ThinkingBlock())
                    yield BlockDelta(index=i, delta=ThinkingDelta(thinking=block.thinking))
                else:
                    import json

                    yield BlockStart(index=i, block=block.model_copy(update={"input": {}}))
                    yield BlockDelta(index=i, delta=ToolArgsDelta(partial_json=json.dumps(block.input)))
                yield BlockStop(index=i)
            yield StreamFinish(stop_reason=stop, usage=response.usage)

        async def chunks():
            async for chunk in fmt.render_chat_stream(events(), request):
                yield chunk

        return accumulate([e async for e in fmt.parse_upstream_chat_stream(chunks())])

    back = asyncio.run(run())
    assert back.content == content and back.stop_reason == stop and back.usage.output_tokens == 4
